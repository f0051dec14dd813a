"""Run the cutover as its own process: python -m services.cutover"""

from services.runtime import main

if __name__ == "__main__":
    main(["cutover"])
