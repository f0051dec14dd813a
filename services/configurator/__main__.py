"""Run the configurator as its own process: python -m services.configurator"""

from services.runtime import main

if __name__ == "__main__":
    main(["configurator"])
