"""`python -m edgectl_agent ...` = the `edgectl-agent` command."""

from edgectl_agent.cli import main

if __name__ == "__main__":
    main()
