"""
Write the students' copy of this repository: everything a student works with, without the
answers (exercises/solutions/ and exercises/KEY.md) and without what runs leave behind (data
files, checkpoints, caches). The graders in the copy work as here; untouched exercises fail
with NotImplementedError and nothing else.

    python exercises/helpers/student_copy.py ../difflora-course      # a new folder; an existing one is refused
"""

import argparse
import fnmatch
import os
import shutil
import sys

EXERCISES = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ROOT = os.path.dirname(EXERCISES)
sys.path.insert(0, ROOT)
from configurator import ArgumentParser  # noqa: E402

ANSWERS = {os.path.join(EXERCISES, "solutions"), os.path.join(EXERCISES, "KEY.md")}
LEFT_OUT = (".git", "__pycache__", ".venv*", ".cache", ".pytest_cache", "out*", "*.bin", "*.safetensors", "*.pt", "*.tmp",
            "input.txt", "meta.json", "prompt.txt")  # run outputs, as .gitignore lists them

parser = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
parser.add_argument("dest", help="the folder to create (it must not exist yet)")
args = parser.parse_args()
if os.path.exists(args.dest):
    raise SystemExit(f"error: {args.dest} already exists: name a new folder (nothing was written)")
if os.path.abspath(args.dest).startswith(ROOT + os.sep):
    raise SystemExit(f"error: {args.dest} is inside the repository; name a folder outside it")


def ignore(folder, names):
    return [n for n in names if os.path.join(folder, n) in ANSWERS or any(fnmatch.fnmatch(n, p) for p in LEFT_OUT)]


shutil.copytree(ROOT, args.dest, ignore=ignore)
print(f"wrote the students' copy to {args.dest} (without exercises/solutions/ and exercises/KEY.md); "
      f"start with exercises/README.md")
