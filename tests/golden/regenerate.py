"""Rewrite the golden config files after an intended change: python tests/golden/regenerate.py"""

from pathlib import Path

from shopsearch.triton.model_config import render_config

if __name__ == "__main__":
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    from tests.test_model_config import GOLDEN, all_configs

    for name, config in all_configs().items():
        (GOLDEN / f"{name}.pbtxt").parent.mkdir(parents=True, exist_ok=True)
        (GOLDEN / f"{name}.pbtxt").write_text(render_config(config))
        print(f"wrote {GOLDEN / name}.pbtxt")
