#!/usr/bin/env python3
# fuzz-pick.py CONTROL_FILE OUT_DIR N: the committed corpus of a target.
# Greedy set cover over a libFuzzer merge control file (-merge=1
# -merge_control_file=F, what `cargo fuzz cmin` runs): at most N inputs,
# each adding the most features (FT) not yet covered, ties to smaller files.
import sys, os, shutil
mcf, outdir, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
lines = open(mcf).read().split('\n')
nfiles = int(lines[0]); files = lines[2:2 + nfiles]
cov = {}; size = {}
for l in lines[2 + nfiles:]:
    p = l.split()
    if not p: continue
    if p[0] == 'STARTED': size[int(p[1])] = int(p[2])
    elif p[0] == 'FT': cov[int(p[1])] = set(p[2:])
allc = set().union(*cov.values()) if cov else set()
chosen, got = [], set()
while len(chosen) < n:
    best = max(cov, key=lambda i: (len(cov[i] - got), -size.get(i, 0)), default=None)
    if best is None or not cov[best] - got: break
    chosen.append(best); got |= cov[best]
shutil.rmtree(outdir, ignore_errors=True); os.makedirs(outdir)
for i in chosen:
    shutil.copy(files[i], outdir)
print(f"{len(chosen)} files, {len(got)}/{len(allc)} features of the whole corpus, {sum(size[i] for i in chosen)} bytes")
