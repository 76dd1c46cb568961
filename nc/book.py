"""`python -m nc.book`: the command line of nc.report.book (kept at this name)."""
from nc.report.book import main

if __name__ == "__main__":
    main()
