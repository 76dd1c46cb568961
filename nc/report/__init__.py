"""The book's logic: a profile's cubes as one grid (nc.report.profiles), claims (analysis, after), figures (grid,
after_plots, fig1), tables and summaries (reports), the pages and their setup (pages), the run page (run_page) and
the driver that trains, executes and renders (book, `python -m nc.book`).
"""
