"""Quiet-STaR decoding driven from the gateway: one engine request per output token."""
