"""`infer.holdout`'s case groups: the split part scored, the extra cases, the errors."""
import json

import pytest

from infer.holdout import build_parser, case_groups


def test_the_split_part_scored_is_the_validation_cases_unless_train_is_asked_for(tmp_path):
    split = tmp_path / "split.json"
    split.write_text(json.dumps({"train": ["a", "b"], "validation": ["c"]}))
    data, extra = tmp_path / "data", tmp_path / "other" / "d"
    assert case_groups(data, split, [extra]) == {"validation": [data / "c"], "d": [extra]}
    assert case_groups(data, split, [], "train") == {"train": [data / "a", data / "b"]}
    args = build_parser().parse_args(["--data", str(data), "--split", str(split), "--part", "train",
                                      "--output", str(tmp_path / "out")])
    assert case_groups(args.data, args.split, args.extra, args.part) == {"train": [data / "a", data / "b"]}
    with pytest.raises(SystemExit):
        build_parser().parse_args(["--split", str(split), "--part", "test", "--output", str(tmp_path / "out")])
    with pytest.raises(ValueError, match="--split needs --data"):
        case_groups(None, split, [], "train")
    with pytest.raises(ValueError, match="no cases"):
        case_groups(None, None, [])
