"""Entry point: ``python -m finetune.evaluate --model ... --data ... --segmenter ... --out DIR``.

See :mod:`finetune.evaluation.cli` for the options.
"""

from finetune.evaluation.cli import main

if __name__ == "__main__":
    from shared.cli import run

    run(main)
