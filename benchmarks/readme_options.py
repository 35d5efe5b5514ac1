"""Write the README's table of `dogbreeds train` options from their declarations in dogbreeds.config.

    python benchmarks/readme_options.py        # rewrites the table between the option markers
"""

from pathlib import Path

from dogbreeds.config import TrainConfig, option_table

README = Path(__file__).resolve().parent.parent / "README.md"
START, END = "<!-- options:train -->\n", "<!-- /options:train -->"

text = README.read_text()
before, rest = text.split(START)
_, after = rest.split(END)
README.write_text(before + START + option_table(TrainConfig) + "\n" + END + after)
print(f"wrote the option table of {README}")
