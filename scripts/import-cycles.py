#!/usr/bin/env python3
"""List import circles between the files of each crate under crates/.

A file's module imports another when it names it by a `crate::` path
(in a `use` or inline); a directory module also depends on the files of
its children (it declares them), while a child's references to its own
ancestors are not counted (the declaration makes those by construction).
Prints every strongly connected component of more than one file; exit
status 1 if any.
"""
import os, re, sys

def modules(src):
    """Map module path (tuple) -> file, for one crate's src/."""
    out = {}
    for root, _, files in os.walk(src):
        for f in files:
            if not f.endswith('.rs'):
                continue
            p = os.path.join(root, f)
            rel = os.path.relpath(p, src)[:-3].split(os.sep)
            if rel[-1] in ('mod',):
                rel = rel[:-1]
            if rel in (['lib'], ['main']):
                rel = []
            out[tuple(rel)] = p
    return out

def strip(text):
    text = re.sub(r'//[^\n]*', '', text)
    text = re.sub(r'/\*.*?\*/', '', text, flags=re.S)
    text = re.sub(r'"(\\.|[^"\\])*"', '""', text)
    # test modules do not make circles of the library
    return re.split(r'#\[cfg\(test\)\]\s*mod\s+tests\s*\{', text)[0]

def refs(text, me, mods):
    found = set()
    paths = re.findall(r'\bcrate((?:::\w+)+)', text)
    # use crate::{a, b::c}
    for grp in re.findall(r'\bcrate::\{([^;]*)\}', text):
        for part in re.split(r'[,{}\s]+', grp):
            if part:
                paths.append('::' + part)
    for p in paths:
        segs = [s for s in p.split('::') if s]
        best = None
        for i in range(len(segs), 0, -1):
            if tuple(segs[:i]) in mods:
                best = tuple(segs[:i]); break
        if best is not None and best != me and best != ():
            # a module's ancestors are not imports of it
            if me[:len(best)] != best:
                found.add(best)
    return found

def sccs(graph):
    index, low, stack, on, out, n = {}, {}, [], set(), [], [0]
    def visit(v):
        index[v] = low[v] = n[0]; n[0] += 1; stack.append(v); on.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w); low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop(); on.discard(w); comp.append(w)
                if w == v: break
            out.append(comp)
    sys.setrecursionlimit(10000)
    for v in list(graph):
        if v not in index:
            visit(v)
    return out

bad = 0
for crate in sorted(os.listdir('crates')):
    src = os.path.join('crates', crate, 'src')
    if not os.path.isdir(src):
        continue
    mods = modules(src)
    graph = {m: refs(strip(open(f).read()), m, mods) for m, f in mods.items()}
    for m in mods:
        if len(m) > 1 and m[:-1] in graph:
            graph[m[:-1]].add(m)
    for comp in sccs(graph):
        if len(comp) > 1:
            bad += 1
            names = sorted('::'.join(c) for c in comp)
            print(f"{crate}: {len(comp)} files in a circle: {', '.join(names)}")
            for c in sorted(comp):
                print('   ', '::'.join(c), '->', ', '.join(sorted('::'.join(d) for d in graph[c] if d in comp)))
sys.exit(1 if bad else 0)
