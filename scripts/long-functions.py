#!/usr/bin/env python3
"""List the functions under crates/ longer than 150 lines (brace matching
over the source with strings, characters and line comments removed), the
longest first. Used for the structure rule of #20: no function over 150
lines unless a note argues for it."""
import re,sys,os
res=[]
for root,_,files in os.walk('crates'):
    for f in files:
        if not f.endswith('.rs'): continue
        p=os.path.join(root,f)
        lines=open(p).read().split('\n')
        i=0
        while i<len(lines):
            l=lines[i]
            m=re.match(r'\s*(pub(\([^)]*\))?\s+)?(async\s+)?(unsafe\s+)?fn\s+(\w+)',l)
            if m:
                # find opening brace
                depth=0;start=i;opened=False;j=i
                while j<len(lines):
                    s=re.sub(r'"(\\.|[^"\\])*"','',lines[j])
                    s=re.sub(r"'(\\.|[^'\\])'",'',s)
                    s=s.split('//')[0]
                    for ch in s:
                        if ch=='{': depth+=1;opened=True
                        elif ch=='}': depth-=1
                    if opened and depth<=0: break
                    if not opened and s.rstrip().endswith(';'): break
                    j+=1
                n=j-start+1
                if n>150: res.append((n,p,start+1,m.group(5)))
            i+=1
for r in sorted(res,reverse=True): print(*r)
