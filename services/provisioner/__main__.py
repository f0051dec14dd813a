"""Run the provisioner as its own process: python -m services.provisioner"""

from services.runtime import main

if __name__ == "__main__":
    main(["provisioner"])
