"""What each `harness` command does once harness/cli.py has parsed its arguments."""
