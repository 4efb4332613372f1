#!/usr/bin/env python3
"""validate.py [FILE...] — check ci/lava/*.yaml with LAVA's own schema code (lava-common).

Each file is recognised by its content and checked with the schema a LAVA server uses:
  job        (has device_type + actions)   lava_common.schemas.validate(job)    [strict]
  test def.  (metadata.format = Lava-Test Test Definition 1.0)
                                           lava_common.schemas.test.testdef.validate(d)
  device     (has constants + actions)     lava_common.schemas.device.validate(d)
Jobs whose test definitions point at ci/lava/ files get those checked to exist too.
Without FILE arguments: every *.yaml next to this script.
Exit: 0 all valid, 1 a file is invalid, 3 lava-common (python3-lava-common: Debian package
lava-common, with python3-voluptuous and python3-yaml) is not installed.
"""
import glob, os, sys

try:
    import yaml
    import lava_common.schemas as schemas
    from lava_common.schemas import device as device_schema
    from lava_common.schemas.test import testdef as testdef_schema
except ImportError as e:
    print(f"validate.py: LAVA's schema code is missing ({e}): apt-get install lava-common",
          file=sys.stderr)
    sys.exit(3)

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))


def kind(d):
    if not isinstance(d, dict):
        return None
    if d.get("metadata", {}).get("format") == "Lava-Test Test Definition 1.0":
        return "test definition"
    if "device_type" in d and isinstance(d.get("actions"), list):
        return "job"
    if "constants" in d and isinstance(d.get("actions"), dict):
        return "device"
    return None


def check(path):
    with open(path) as f:
        d = yaml.safe_load(f)
    k = kind(d)
    if k == "job":
        schemas.validate(d, strict=True)
        for action in d["actions"]:
            for t in action.get("test", {}).get("definitions", []):
                p = t.get("path", "")
                if p.startswith("ci/lava/") and not os.path.exists(os.path.join(ROOT, p)):
                    raise ValueError(f"test definition {p} does not exist")
    elif k == "test definition":
        testdef_schema.validate(d)
        for step in d.get("run", {}).get("steps", []):
            for word in step.replace(";", " ").replace("(", " ").split():
                if word.startswith("ci/lava/") and not os.path.exists(os.path.join(ROOT, word)):
                    raise ValueError(f"step uses {word}, which does not exist")
    elif k == "device":
        device_schema.validate(d)
    else:
        raise ValueError("neither a LAVA job, a test definition nor a device configuration")
    return k


def main():
    files = sys.argv[1:] or sorted(glob.glob(os.path.join(HERE, "*.yaml")))
    bad = 0
    for path in files:
        try:
            print(f"ok      {os.path.relpath(path)}: {check(path)}")
        except Exception as e:  # voluptuous.Invalid, yaml.YAMLError, ValueError
            bad += 1
            print(f"INVALID {os.path.relpath(path)}: {type(e).__name__}: {e}")
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()
