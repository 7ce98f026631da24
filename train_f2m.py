"""Not built yet: see the training issue."""

import sys

if __name__ == "__main__":
    sys.exit("train_f2m.py is not built yet.")
