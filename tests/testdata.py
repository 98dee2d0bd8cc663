"""Where the real data files the tests read live: testdata/ at the top of the repository.

The path is found from this file's place in the repository, never from an absolute path, so the
tests run the same in any clone. The files are committed: a missing one is an error, not a skip.
"""

from pathlib import Path

TESTDATA = Path(__file__).resolve().parents[1] / "testdata"
SAMPLE_DOCS = TESTDATA / "sample-docs"
SHAKESPEARE = TESTDATA / "tinyshakespeare" / "input.txt"
SMS_SPAM = TESTDATA / "sms-spam-collection" / "SMSSpamCollection"
INSTRUCTION_DATA = TESTDATA / "llms-from-scratch" / "instruction-data.json"
