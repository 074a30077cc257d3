"""REBASE (reward-balanced tree search): the engine-independent pieces.

``allocation`` hands the expansion budget of one depth to the scored nodes; ``aggregation`` turns
the finished leaves into one answer. Both are pure functions, so the scheduler that drives the
engine can be tested separately from the arithmetic of the paper.
"""
