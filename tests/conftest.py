"""Import the package from this checkout's src/, whatever copy pip installed in editable mode."""
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "src"))
