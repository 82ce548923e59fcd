"""Prototype: cost of the in-hook column centring vs the bare Gram GEMM, (128, K) float32,
with a fresh temporary (today), and with a reused scratch buffer; ms per call, min of 10-20.

    python benchmarks/prototypes/centring_cost.py
"""
import torch, time
def bench(fs, reps=20):
    b={k:1e9 for k in fs}
    for r in range(reps):
        for k,f in fs.items():
            t=time.perf_counter(); f(); b[k]=min(b[k],time.perf_counter()-t)
    return b
scratch=torch.empty(128*65536)
for th in (2,1):
    torch.set_num_threads(th)
    for K in (1024, 4096, 16384, 65536):
        x=torch.randn(128,K)+2
        def cur(x=x):
            mu=x.mean(0,keepdim=True); xc=x-mu; return xc@xc.T
        def summean(x=x):
            mu=x.sum(0,keepdim=True).mul_(1/128); xc=x-mu; return xc@xc.T
        def scr(x=x,K=K):
            mu=x.sum(0,keepdim=True).mul_(1/128); xc=scratch[:128*K].view(128,K); torch.sub(x,mu,out=xc); return xc@xc.T
        def chunked(x=x,K=K,c=8192):
            mu=x.sum(0,keepdim=True).mul_(1/128)
            g=torch.zeros(128,128)
            for s in range(0,K,c):
                e=min(K,s+c); xc=scratch[:128*(e-s)].view(128,e-s); torch.sub(x[:,s:e],mu[:,s:e],out=xc)
                g.addmm_(xc,xc.T)
            return g
        fs={'mm':lambda: x@x.T,'cur':cur,'sum-mean':summean,'sum-mean+scratch':scr,'chunk8192+scratch':chunked}
        b=bench(fs, 10 if K>=65536 else 20)
        print(th, K, '  '.join(f"{k} {v*1e3:.3f}" for k,v in b.items()))
