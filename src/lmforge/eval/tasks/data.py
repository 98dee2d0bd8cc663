"""Loads the quick tasks' examples from the JSONL files beside this file (the task YAMLs name it with
`custom_dataset: !function data.<name>`), so the tasks run offline from wherever lmforge is installed."""

from pathlib import Path

HERE = Path(__file__).parent


def _load(file_name: str, **_ignored):
    import datasets

    return datasets.DatasetDict({"test": datasets.Dataset.from_json(str(HERE / file_name))})


def shakespeare_last_word(**kwargs):
    return _load("shakespeare_last_word.jsonl", **kwargs)


def python_keyword(**kwargs):
    return _load("python_keyword.jsonl", **kwargs)


def shakespeare_passages(**kwargs):
    return _load("shakespeare_passages.jsonl", **kwargs)
