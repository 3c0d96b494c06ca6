"""`python train.py task=nlp/translation dataset=nlp/translation/wmt16 trainer=deepspeed`: the same app as `zerorun`."""

from jobs.cli import main

if __name__ == "__main__":
    main()
