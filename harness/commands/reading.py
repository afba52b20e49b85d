"""What the commands that read runs (report, audit, card) share: their reading options, and where
the runs come from (the store, or run ledgers: docs/ledger.md)."""

from __future__ import annotations


def add_reading_options(parser) -> None:
    """Which epoch's accuracy, smoke runs or not, a store or ledgers."""
    parser.add_argument("--select", choices=["last", "best-val"], default="last",
                        help="test accuracy at the last epoch (default) or at the best validation epoch")
    parser.add_argument("--include-smoke", action="store_true", help="count --smoke runs too")
    parser.add_argument("--from", dest="ledgers", nargs="+", metavar="LEDGER",
                        help="read the runs from run ledgers instead of the store (docs/ledger.md)")


def runs_source(args, tracking_uri: str):
    """The ledgers of --from (read and checked), else the store's tracking URI."""
    from harness.tracking.ledger import Ledgers

    return Ledgers(args.ledgers) if getattr(args, "ledgers", None) else tracking_uri
