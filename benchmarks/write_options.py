"""Write docs/options.md, the table of `dogbreeds train` options, from their declarations in dogbreeds.config.

    python benchmarks/write_options.py        # rewrites the table between the option markers
"""

from pathlib import Path

from dogbreeds.config import TrainConfig
from dogbreeds.options import option_table

PAGE = Path(__file__).resolve().parent.parent / "docs" / "options.md"
START, END = "<!-- options:train -->\n", "<!-- /options:train -->"

text = PAGE.read_text()
before, rest = text.split(START)
_, after = rest.split(END)
PAGE.write_text(before + START + option_table(TrainConfig) + "\n" + END + after)
print(f"wrote the option table of {PAGE}")
