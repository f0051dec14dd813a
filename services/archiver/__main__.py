"""Run the archiver as its own process: python -m services.archiver"""

from services.runtime import main

if __name__ == "__main__":
    main(["archiver"])
