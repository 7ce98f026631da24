"""Staged training of RFNet: stages, the shared loop, strategies and the script runners."""
