"""Prototype (not simtorch code): a lean streaming CKA in the engine shape recommended in
benchmarks/README.md, timed against forward-only, grams-only and simtorch today, interleaved
in one process, plus its error against the float64-math reference.

    OMP_NUM_THREADS=1 python benchmarks/prototypes/lean_engine.py grid100 7 1 [f32]
    (args: workload, repeats, threads, optional 'f32' = float32 U-centring and cross GEMM)

Lean = hooks registered once per pass (not per batch), each Gram written by torch.mm(out=)
into a preallocated (L, n, n) stack (no torch.stack copy), U-centring in place on one
float64 copy, one cross GEMM, self-terms by vecdot.
"""
import sys, time, statistics, gc
import os; sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), '..'))
import common as C, reference64 as R, torch
wl=sys.argv[1]; reps=int(sys.argv[2]); C.set_threads(int(sys.argv[3]))
gemm32 = len(sys.argv)>4 and sys.argv[4]=='f32'
w=C.WORKLOADS[wl]; dev=torch.device('cpu')
ma,mb=C.build_models(w); loader=C.make_loader(1024,w.image_size,128,dev); sa,sb=C.wrap(w,ma,mb)
f64=torch.float64
def ucentre_(k):
    n=k.shape[-1]
    k.diagonal(dim1=-2,dim2=-1).zero_()
    r=k.sum(-1); t=r.sum(-1); r.div_(n-2)
    k.sub_(r.unsqueeze(-1)).sub_(r.unsqueeze(-2)).add_((t/((n-1)*(n-2)))[:,None,None])
    k.diagonal(dim1=-2,dim2=-1).zero_()
    return k.reshape(k.shape[0],-1)
def lean(out):
    def run():
        La,Lb=len(sa.layer_names),len(sb.layer_names)
        st={'buf':None}
        def mk(side,i):
            def hook(m,a,o):
                x=o.reshape(o.shape[0],-1); n=x.shape[0]
                mu=x.sum(0,keepdim=True).mul_(1.0/n)
                xc=x-mu
                torch.mm(xc,xc.T,out=st['buf'][side][i])
            return hook
        hs=[]
        for side,sm in ((0,sa),(1,sb)):
            for i,nm in enumerate(sm.layer_names): hs.append(sm.base_model.get_submodule(nm).register_forward_hook(mk(side,i)))
        cross=torch.zeros(La,Lb,dtype=f64); s1=torch.zeros(La,dtype=f64); s2=torch.zeros(Lb,dtype=f64)
        try:
            with torch.inference_mode():
                for b in loader:
                    x=b[0]; n=x.shape[0]
                    if st['buf'] is None or st['buf'][0].shape[-1]!=n:
                        st['buf']=(torch.empty(La,n,n),torch.empty(Lb,n,n))
                    ma(x); mb(x)
                    c=1.0/(n*(n-3))
                    if gemm32:
                        fa=ucentre_(st['buf'][0].clone()); fb=ucentre_(st['buf'][1].clone())
                        cross.add_((fa@fb.T).to(f64),alpha=c)
                        s1.add_(torch.linalg.vecdot(fa.to(f64),fa.to(f64)),alpha=c); s2.add_(torch.linalg.vecdot(fb.to(f64),fb.to(f64)),alpha=c)
                    else:
                        fa=ucentre_(st['buf'][0].to(f64)); fb=ucentre_(st['buf'][1].to(f64))
                        cross.add_(fa@fb.T,alpha=c); s1.add_(torch.linalg.vecdot(fa,fa),alpha=c); s2.add_(torch.linalg.vecdot(fb,fb),alpha=c)
        finally:
            for h in hs: h.remove()
        out['lean']=cross/torch.sqrt(s1[:,None]*s2[None,:])
    return run
out={}
ph={'fwd':C.forward_only((ma,mb),loader,dev),'grams':C.grams_only(sa,sb,loader,dev),'lean':lean(out),'sim_cur':C.similarity(w,sa,sb,loader,dev,out)}
for f in ph.values(): f()
W={k:[] for k in ph}; CP={k:[] for k in ph}; names=list(ph)
for r in range(reps):
    order=names[r%len(names):]+names[:r%len(names)]
    if r%2: order=order[::-1]
    for k in order:
        gc.collect(); t=time.perf_counter(); c=time.process_time(); ph[k](); W[k].append(time.perf_counter()-t); CP[k].append(time.process_time()-c)
ref=R.reference_grid(ma,mb,sa.layer_names,sb.layer_names,loader,dev,torch.float32)
print(f"{wl} threads={torch.get_num_threads()} reps={reps} gemm32={gemm32} load={open('/proc/loadavg').read().split()[:3]}")
med=lambda k: statistics.median(a/b for a,b in zip(CP[k],CP['fwd']))
for k in names:
    print(f"  {k:8s} wall med {statistics.median(W[k]):6.3f} | wall paired {statistics.median(a/b for a,b in zip(W[k],W['fwd'])):.3f} min/min {min(W[k])/min(W['fwd']):.3f} | cpu paired {med(k):.3f} cpu min/min {min(CP[k])/min(CP['fwd']):.3f}")
g=med('grams')-1
for k in ('lean','sim_cur'): print(f"  above-Gram/Gram (cpu paired) {k}: {(med(k)-med('grams'))/g:.2f}")
print('  err lean', R.max_abs_err(out['lean'],ref), 'err cur', R.max_abs_err(out['grid'],ref))
