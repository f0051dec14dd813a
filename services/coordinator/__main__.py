"""Run the coordinator as its own process: python -m services.coordinator"""

from services.runtime import main

if __name__ == "__main__":
    main(["coordinator"])
