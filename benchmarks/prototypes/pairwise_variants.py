"""Prototype (not simtorch code): the per-batch pairwise part (U-centring + cross GEMM +
self-terms) in several variants, on the real Grams of a workload captured through simtorch's
engine; CPU ms per batch (min of 7) and the grid's max error vs the float64-math reference.

    OMP_NUM_THREADS=1 python benchmarks/prototypes/pairwise_variants.py grid100 1
"""
import sys, time, statistics
import os; sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), '..'))
import common as C, reference64 as R, torch
from simtorch import functional as F
from simtorch.engine import Metric, stream
wl=sys.argv[1]; C.set_threads(int(sys.argv[2]) if len(sys.argv)>2 else 1)
w=C.WORKLOADS[wl]; dev=torch.device('cpu')
ma,mb=C.build_models(w); loader=C.make_loader(1024,w.image_size,128,dev); sa,sb=C.wrap(w,ma,mb)
class Rec(Metric):
    def __init__(s): s.b=[]
    def update(s,b): s.b.append((b.grams_a.clone(),b.energy_a.clone(),b.grams_b.clone(),b.energy_b.clone(),b.n))
    def result(s): return None
rec=Rec(); stream(sa,sb,loader,[rec],dev,progress=False)
ref=R.reference_grid(ma,mb,sa.layer_names,sb.layer_names,loader,dev,torch.float32)
f64=torch.float64
def v_cur(ga,gb,n):
    c=F.hsic_factor(n,True)
    fa=F.centered_flat(ga.to(f64),True); fb=F.centered_flat(gb.to(f64),True)
    return (fa@fb.T)*c,(fa*fa).sum(-1)*c,(fb*fb).sum(-1)*c
def ucentre_inplace(k):
    n=k.shape[-1]
    k.diagonal(dim1=-2,dim2=-1).zero_()
    r=k.sum(-1)                      # (L,n)
    t=r.sum(-1)                      # (L,)
    r=r.div_(n-2)
    k.sub_(r.unsqueeze(-1)).sub_(r.unsqueeze(-2)).add_((t/((n-1)*(n-2))).to(k.dtype)[:,None,None])
    k.diagonal(dim1=-2,dim2=-1).zero_()
    return k.reshape(k.shape[0],-1)
def v_inpl64(ga,gb,n):
    c=F.hsic_factor(n,True)
    fa=ucentre_inplace(ga.to(f64)); fb=ucentre_inplace(gb.to(f64))
    return (fa@fb.T)*c,(fa*fa).sum(-1)*c,(fb*fb).sum(-1)*c
def v_inpl32(ga,gb,n):
    c=F.hsic_factor(n,True)
    fa=ucentre_inplace(ga.clone()); fb=ucentre_inplace(gb.clone())
    return (fa@fb.T).to(f64)*c,(fa.to(f64)**2).sum(-1)*c,(fb.to(f64)**2).sum(-1)*c
def song_prep(g,dt):
    k=g.to(dt,copy=True); k.diagonal(dim1=-2,dim2=-1).zero_()
    r=k.sum(-1,dtype=f64); t=r.sum(-1)
    return k.reshape(k.shape[0],-1),r,t
def song(fa,ra,ta,fb,rb,tb,n):
    return ((fa@fb.T).to(f64)+torch.outer(ta,tb)/((n-1)*(n-2))-(2.0/(n-2))*(ra@rb.T))/(n*(n-3))
def song_self(f,r,t,n):
    return ((f.to(f64)**2).sum(-1) if f.dtype!=f64 else (f*f).sum(-1), )[0]/(n*(n-3)) + (t*t/((n-1)*(n-2))-(2.0/(n-2))*(r*r).sum(-1))/(n*(n-3))
def v_song64(ga,gb,n):
    A=song_prep(ga,f64); B=song_prep(gb,f64)
    return song(*A,*B,n),song_self(*A,n),song_self(*B,n)
def v_song32(ga,gb,n):
    A=song_prep(ga,torch.float32); B=song_prep(gb,torch.float32)
    return song(*A,*B,n),song_self(*A,n),song_self(*B,n)
V={'cur(U fp64)':v_cur,'U fp64 in-place':v_inpl64,'U fp32 in-place + fp32 GEMM':v_inpl32,'Song fp64':v_song64,'Song fp32 GEMM':v_song32}
T={k:[] for k in V}; err={}
with torch.inference_mode():
  for k,f in V.items():
    S=None
    for ga,ea,gb,eb,n in rec.b:
        cr,s1,s2=f(ga,gb,n); S=(cr,s1,s2) if S is None else (S[0]+cr,S[1]+s1,S[2]+s2)
    grid=S[0]/torch.sqrt(S[1][:,None]*S[2][None,:]); err[k]=(grid-ref).abs().max().item()
  for rep in range(7):
    for k,f in V.items():
        c=time.process_time()
        for ga,ea,gb,eb,n in rec.b: f(ga,gb,n)
        T[k].append((time.process_time()-c)/len(rec.b))
print(f"{wl} grid {rec.b[0][0].shape[0]}x{rec.b[0][2].shape[0]}, threads {torch.get_num_threads()}: pairwise part per batch (CPU ms, min of 7) and max err vs f64-math ref")
for k in V: print(f"  {k:30s} {min(T[k])*1e3:8.2f} ms   err {err[k]:.1e}")
