#!/usr/bin/env bash
# Fill .whl/ (git-ignored; carried to the device machine with the run tool's `carry`) with the
# wheels bench/gpu_check2.sh needs beyond the device image's own packages (the device tool's
# KINDS.md lists them: torch 2.11, torchvision 0.26, transformers 5.17, huggingface_hub 1.33,
# numpy, pillow, pyarrow, scipy, scikit-learn, torchmetrics, pytest, ... are there and are used
# as they are). cp312 manylinux x86_64 / pure-Python, no dependencies resolved (each one is named).
#
#   bash bench/gpu_wheels.sh [DIR]     # default .whl; needs pip and the package index
#
# The run tool carries at most 64 MiB with the working tree (about 4.5 MB here), so:
# - transformers 5.24 / huggingface_hub 2.4 are NOT carried (13.8 MB with httpx2); the device's
#   transformers 5.17 and huggingface_hub 1.33 are inside the project's ranges (>=5,<6; >=1,<3);
# - polars (birder imports it at import time; Places365) is carried, its 51 MiB runtime wheel
#   rewritten with LZMA-compressed members (31 MiB; same files, so RECORD's hashes still hold;
#   pip reads such wheels through zipfile); the total is about 53 MiB.
set -euo pipefail
DIR="${1:-.whl}"
PIP="${PIP:-python3 -m pip}"
WHEELS=(
  # dagster and its pure-Python needs the image lacks (dagster-postgres: instance_storage imports it)
  dagster==1.13.27 dagster-pipes==1.13.27 dagster-shared==1.13.27 dagster-postgres==0.29.27 psycopg2-binary==2.9.13
  alembic==1.20.1 Mako==1.4.3 SQLAlchemy==2.1.9 antlr4-python3-runtime==4.13.2 coloredlogs==14.0 humanfriendly==10.0
  docstring_parser==0.18.0 pydantic==2.14.4 pydantic_core==2.50.5 annotated-types==0.8.0 typing-inspection==0.4.5
  structlog==26.1.0 toposort==1.10 tomli==2.5.0 tomlkit==0.15.2 python-dotenv==1.2.4 pytz==2026.6 tzdata==2026.6
  universal_pathlib==0.3.10 pathlib_abc==0.5.2 watchdog==6.0.0 platformdirs==4.14.9
  protobuf==6.33.5  # dagster needs protobuf<7; the image's version is not known here
  # the instruments' libraries
  open_clip_torch==3.3.0 ftfy==6.3.1 wcwidth==0.9.4 timm==1.0.31
  birder==0.8.4 polars==2.1.0 polars-runtime-32==2.1.0 webdataset==1.0.2 braceexpand==0.1.7 torchinfo==1.8.0
  carvekit==4.1.2 segment-anything==1.0 pycocotools==2.0.11
)
mkdir -p "$DIR"
$PIP download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux2014_x86_64 --platform any -d "$DIR" "${WHEELS[@]}"
python3 - "$DIR"/polars_runtime_32-*.whl "$DIR"/sqlalchemy-*.whl "$DIR"/psycopg2_binary-*.whl "$DIR"/pydantic_core-*.whl <<'EOF'
import os, sys, zipfile
for path in sys.argv[1:]:
    with zipfile.ZipFile(path) as zin:
        if all(i.compress_type == zipfile.ZIP_LZMA for i in zin.infolist()):
            continue
        tmp = path + ".lzma"
        with zipfile.ZipFile(tmp, "w") as zout:
            for info in zin.infolist():
                member = zipfile.ZipInfo(info.filename, date_time=info.date_time)
                member.external_attr, member.compress_type = info.external_attr, zipfile.ZIP_LZMA
                zout.writestr(member, zin.read(info))
    before = os.path.getsize(path)
    os.replace(tmp, path)
    print(f"{os.path.basename(path)}: {before / 2**20:.1f} -> {os.path.getsize(path) / 2**20:.1f} MiB (LZMA members)")
EOF
echo "$DIR: $(ls "$DIR"/*.whl | wc -l) wheels, $(du -sm "$DIR" | cut -f1) MiB"
