"""`python -m nc.prepare`: the command line of nc.data.prepare (kept at this name)."""
from nc.data.prepare import main

if __name__ == "__main__":
    main()
