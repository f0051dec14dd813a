"""Run the gateway as its own process: python -m services.gateway"""

from services.runtime import main

if __name__ == "__main__":
    main([], gateway=True)
