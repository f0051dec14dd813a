"""Run the creator as its own process: python -m services.creator"""

from services.runtime import main

if __name__ == "__main__":
    main(["creator"])
