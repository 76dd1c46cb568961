"""`python -m nc.collapse`: neural collapse of any network, from the command line (nc.measure.command); with
--plot, the measures over a --checkpoints series drawn in the book's style (nc.report.collapse_plot)."""
import sys

from nc.data import DataError, DatasetUnavailable
from nc.measure import command


def main(argv=None) -> int:
    args = command.parser().parse_args(argv)
    try:
        if args.plot and not args.checkpoints:
            raise ValueError("--plot draws a series: pass --checkpoints too")
        ds = command.run(args)
        if args.out:
            command.write(ds, args.out)
        print(command.show(ds))
        if args.plot:
            from nc.report import collapse_plot
            collapse_plot.save(ds, args.plot)
    except (ValueError, TypeError, DataError, DatasetUnavailable) as err:
        print(f"nc.collapse: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
