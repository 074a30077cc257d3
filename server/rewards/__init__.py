"""Process reward models: score each reasoning step of a candidate path in [0, 1].

``base.RewardModel`` is the one interface REBASE talks to; ``arithmetic`` is the CPU-only default.
"""
