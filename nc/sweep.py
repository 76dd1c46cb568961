"""`python -m nc.sweep`: the command line of nc.runs.sweep (kept at this name)."""
from nc.runs.sweep import main

if __name__ == "__main__":
    main()
