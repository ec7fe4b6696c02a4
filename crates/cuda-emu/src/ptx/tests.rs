//! Tests of the PTX interpreter on small kernels (hand-written or from NVRTC).

#![allow(clippy::needless_range_loop)]

use super::*;
use crate::mem::Memory;

/// A parameter buffer built from 8-byte-or-less values at the kernel's offsets.
fn params(k: &Kernel, vals: &[u64]) -> Vec<u8> {
    let size = k
        .params
        .iter()
        .map(|p| p.offset + p.size)
        .max()
        .unwrap_or(0);
    let mut b = vec![0u8; size];
    for (p, v) in k.params.iter().zip(vals) {
        b[p.offset..p.offset + p.size].copy_from_slice(&v.to_le_bytes()[..p.size]);
    }
    b
}

fn put_f32(mem: &mut Memory, a: u64, v: &[f32]) {
    let b = mem.bytes_mut(a, v.len() as u64 * 4).unwrap();
    for (i, x) in v.iter().enumerate() {
        b[i * 4..i * 4 + 4].copy_from_slice(&x.to_le_bytes());
    }
}

fn get_f32(mem: &Memory, a: u64, n: usize) -> Vec<f32> {
    let b = mem.bytes(a, n as u64 * 4).unwrap();
    (0..n)
        .map(|i| f32::from_le_bytes(b[i * 4..i * 4 + 4].try_into().unwrap()))
        .collect()
}

fn launch_run(
    m: &Module,
    mem: &mut Memory,
    name: &str,
    grid: [u32; 3],
    block: [u32; 3],
    shared: u32,
    vals: &[u64],
) -> Result<KernelStats, Fault> {
    let i = m
        .kernels()
        .iter()
        .position(|k| k.name == name)
        .expect("kernel");
    let p = params(&m.kernels()[i], vals);
    let mut st = KernelStats::default();
    m.run(
        i,
        &Launch {
            grid,
            block,
            shared_dynamic: shared,
            params: &p,
        },
        mem,
        &mut st,
    )?;
    Ok(st)
}

#[test]
#[ignore]
fn all_work_ptx_files_load() {
    let mut names: Vec<_> = std::fs::read_dir("/work/ptx")
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "ptx"))
        .collect();
    names.sort();
    let mut bad = Vec::new();
    for p in names {
        let text = std::fs::read_to_string(&p).unwrap();
        let mut mem = Memory::new(1);
        match Module::load(&text, &mut mem, 0) {
            Ok(m) => eprintln!("{}: {} kernels", p.display(), m.kernels().len()),
            Err(e) => bad.push(format!("{}: {e}", p.display())),
        }
    }
    assert!(bad.is_empty(), "{}", bad.join("\n"));
}

const SMALL: &str = include_str!("../../tests/data/small_sm70.ptx");

fn small() -> (Module, Memory) {
    let mut mem = Memory::new(1);
    let m = Module::load(SMALL, &mut mem, 0).unwrap();
    (m, mem)
}

#[test]
fn vector_add_and_stats() {
    let (m, mut mem) = small();
    let n = 100;
    let (a, b, c) = (mem.alloc(0, 400), mem.alloc(0, 400), mem.alloc(0, 400));
    let av: Vec<f32> = (0..n).map(|i| i as f32 * 0.5).collect();
    let bv: Vec<f32> = (0..n).map(|i| 1.0 - i as f32).collect();
    put_f32(&mut mem, a, &av);
    put_f32(&mut mem, b, &bv);
    let st = launch_run(
        &m,
        &mut mem,
        "vadd",
        [2, 1, 1],
        [64, 1, 1],
        0,
        &[a, b, c, n as u64],
    )
    .unwrap();
    let cv = get_f32(&mem, c, n);
    for i in 0..n {
        assert_eq!(cv[i], av[i] + bv[i]);
    }
    assert_eq!(st.launches, 1);
    assert_eq!(st.bytes_requested, 100 * 12);
    assert_eq!(st.sectors_read, 2 * 13);
    assert_eq!(st.sectors_written, 13);
    assert!(st.warp_instructions > 4 * 5, "{st:?}");
}

#[test]
fn warp_shuffle_reduction() {
    let (m, mut mem) = small();
    let x = mem.alloc(0, 64 * 4);
    let out = mem.alloc(0, 8);
    let xv: Vec<f32> = (0..64).map(|i| (i % 7) as f32 + 0.25).collect();
    put_f32(&mut mem, x, &xv);
    launch_run(
        &m,
        &mut mem,
        "warp_sum",
        [2, 1, 1],
        [32, 1, 1],
        0,
        &[x, out],
    )
    .unwrap();
    let o = get_f32(&mem, out, 2);
    for b in 0..2 {
        let s: f32 = xv[b * 32..b * 32 + 32].iter().sum();
        assert!((o[b] - s).abs() < 1e-3, "{} vs {}", o[b], s);
    }
}

#[test]
fn shared_block_reduction_with_barriers() {
    let (m, mut mem) = small();
    let n = 1000;
    let x = mem.alloc(0, n * 4);
    let out = mem.alloc(0, 8);
    let xv: Vec<f32> = (0..n).map(|i| (i % 10) as f32).collect();
    put_f32(&mut mem, x, &xv);
    launch_run(
        &m,
        &mut mem,
        "block_sum",
        [1, 1, 1],
        [256, 1, 1],
        1024,
        &[x, out, n],
    )
    .unwrap();
    let o = get_f32(&mem, out, 2);
    assert_eq!(o[0], 4500.0);
    assert_eq!(o[1], 256.0);
    // Without the dynamic shared memory it needs, the kernel faults in the shared space.
    let e = launch_run(
        &m,
        &mut mem,
        "block_sum",
        [1, 1, 1],
        [256, 1, 1],
        0,
        &[x, out, n],
    )
    .unwrap_err();
    assert!(e.message.contains("shared"), "{e}");
}

#[test]
fn divergent_branches_reconverge() {
    let (m, mut mem) = small();
    let out = mem.alloc(0, 32 * 4);
    launch_run(&m, &mut mem, "diverge", [1, 1, 1], [32, 1, 1], 0, &[out]).unwrap();
    let r = |t: i32| -> i32 {
        if t & 1 != 0 {
            t * 3 + if t > 10 { 100 } else { -1 }
        } else {
            -t + (0..t).sum::<i32>()
        }
    };
    let b = mem.bytes(out, 128).unwrap();
    for t in 0..32 {
        let v = i32::from_le_bytes(b[t * 4..t * 4 + 4].try_into().unwrap());
        assert_eq!(v, r(t as i32) + r(t as i32 ^ 1), "thread {t}");
    }
}

#[test]
fn dp4a_matches_reference() {
    let (m, mut mem) = small();
    let (a, b, out) = (mem.alloc(0, 128), mem.alloc(0, 128), mem.alloc(0, 128));
    let av: Vec<u32> = (0..32u32).map(|i| i.wrapping_mul(0x9e37_79b9)).collect();
    let bv: Vec<u32> = (0..32u32)
        .map(|i| i.wrapping_mul(0x85eb_ca6b) ^ 0x8080_7f01)
        .collect();
    for (p, v) in [(a, &av), (b, &bv)] {
        let bb = mem.bytes_mut(p, 128).unwrap();
        for i in 0..32 {
            bb[i * 4..i * 4 + 4].copy_from_slice(&v[i].to_le_bytes());
        }
    }
    launch_run(
        &m,
        &mut mem,
        "dp4a_k",
        [1, 1, 1],
        [32, 1, 1],
        0,
        &[a, b, out],
    )
    .unwrap();
    let ob = mem.bytes(out, 128).unwrap();
    for t in 0..32 {
        let mut acc = t as i32;
        for k in 0..4 {
            acc += (av[t] >> (8 * k)) as u8 as i8 as i32 * (bv[t] >> (8 * k)) as u8 as i8 as i32;
        }
        assert_eq!(
            i32::from_le_bytes(ob[t * 4..t * 4 + 4].try_into().unwrap()),
            acc
        );
    }
}

#[test]
fn conversions_round_as_asked() {
    let (m, mut mem) = small();
    let xs = [1.5f32, 2.5, -1.5, -0.5, 0.3, 1e10, -1e10, 0.7];
    let (x, oi, of, oh) = (
        mem.alloc(0, 32),
        mem.alloc(0, 128),
        mem.alloc(0, 64),
        mem.alloc(0, 16),
    );
    put_f32(&mut mem, x, &xs);
    launch_run(
        &m,
        &mut mem,
        "conv",
        [1, 1, 1],
        [8, 1, 1],
        0,
        &[x, oi, of, oh],
    )
    .unwrap();
    let ib = mem.bytes(oi, 128).unwrap().to_vec();
    let geti = |i: usize| i32::from_le_bytes(ib[i * 4..i * 4 + 4].try_into().unwrap());
    let want: [[i32; 4]; 8] = [
        [2, 1, 1, 2],
        [2, 2, 2, 3],
        [-2, -1, -2, -1],
        [0, 0, -1, 0],
        [0, 0, 0, 1],
        [i32::MAX, i32::MAX, i32::MAX, i32::MAX],
        [i32::MIN, i32::MIN, i32::MIN, i32::MIN],
        [1, 0, 0, 1],
    ];
    let f = get_f32(&mem, of, 16);
    let h = mem.bytes(oh, 16).unwrap();
    for t in 0..8 {
        for k in 0..4 {
            assert_eq!(geti(4 * t + k), want[t][k], "thread {t} mode {k}");
        }
        assert_eq!(f[2 * t], xs[t].clamp(0.0, 1.0));
        assert_eq!(f[2 * t + 1], t as f32 - 3.0);
        let hv = u16::from_le_bytes([h[2 * t], h[2 * t + 1]]);
        assert_eq!(hv, half::f16::from_f32(xs[t]).to_bits());
    }
}

#[test]
fn global_table_is_initialised() {
    let (mut m, mut mem) = small();
    let (idx, out) = (mem.alloc(0, 128), mem.alloc(0, 128));
    let ib = mem.bytes_mut(idx, 128).unwrap();
    for t in 0..32 {
        ib[t * 4..t * 4 + 4].copy_from_slice(&((t * 5) as u32).to_le_bytes());
    }
    launch_run(&m, &mut mem, "depot", [1, 1, 1], [32, 1, 1], 0, &[idx, out]).unwrap();
    let table = [3, 1, 4, 1, 5, 9, 2];
    let ob = mem.bytes(out, 128).unwrap();
    for t in 0..32 {
        let v = i32::from_le_bytes(ob[t * 4..t * 4 + 4].try_into().unwrap());
        assert_eq!(v, table[(t * 5) % 7] * (t as i32 + 1));
    }
    let live = mem.allocs.iter().filter(|a| a.live).count();
    m.unload(&mut mem);
    assert_eq!(mem.allocs.iter().filter(|a| a.live).count(), live - 1);
}

#[test]
fn store_past_the_end_faults() {
    let (m, mut mem) = small();
    let x = mem.alloc(0, 100 * 4);
    let e = launch_run(&m, &mut mem, "oob", [2, 1, 1], [64, 1, 1], 0, &[x, 100]).unwrap_err();
    assert_eq!(e.kernel, "oob");
    assert_eq!(e.block, [1, 0, 0]);
    assert_eq!(e.thread, [36, 0, 0]);
    assert_eq!(e.addr, Some(x + 400));
    assert!(e.message.contains("invalid global write of 4 bytes"), "{e}");
    assert!(e.message.contains("past the end"), "{e}");
    assert!(e.instr.starts_with("st.global"), "{e}");
    let src_line: String = SMALL
        .lines()
        .nth(e.line - 1)
        .unwrap()
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ");
    assert_eq!(src_line, e.instr);
    // The sector bits were cleared even so: a new launch counts afresh.
    let st = launch_run(&m, &mut mem, "oob", [1, 1, 1], [64, 1, 1], 0, &[x, 50]).unwrap();
    assert_eq!(st.sectors_written, 7);
}

#[test]
fn without_debug_directives_it_loads_too() {
    let stripped: String = SMALL
        .lines()
        .map(|l| {
            if l.trim_start().starts_with(".loc\t")
                || l.trim_start().starts_with(".loc ")
                || l.trim_start().starts_with(".file")
            {
                ""
            } else {
                l
            }
        })
        .collect::<Vec<_>>()
        .join("\n");
    let mut mem = Memory::new(1);
    let m = Module::load(&stripped, &mut mem, 0).unwrap();
    assert_eq!(m.kernels().len(), 8);
}

#[test]
fn bad_launches_are_faults() {
    let (m, mut mem) = small();
    let x = mem.alloc(0, 4);
    let e = launch_run(&m, &mut mem, "oob", [1, 1, 1], [1025, 1, 1], 0, &[x, 0]).unwrap_err();
    assert!(e.message.contains("1025"), "{e}");
    let e = launch_run(&m, &mut mem, "oob", [0, 1, 1], [32, 1, 1], 0, &[x, 0]).unwrap_err();
    assert!(e.message.contains("zero"), "{e}");
    let mut st = KernelStats::default();
    let e = m.run(
        0,
        &Launch {
            grid: [1; 3],
            block: [1; 3],
            shared_dynamic: 0,
            params: &[],
        },
        &mut mem,
        &mut st,
    );
    assert!(e.unwrap_err().message.contains("parameter"));
    assert!(m
        .run(
            99,
            &Launch {
                grid: [1; 3],
                block: [1; 3],
                shared_dynamic: 0,
                params: &[]
            },
            &mut mem,
            &mut st
        )
        .is_err());
}

const HAND: &str = r#"
.version 8.8
.target sm_70
.address_size 64

.visible .entry hand(
	.param .u64 out,
	.param .align 8 .b8 s[16],
	.param .u32 k
)
{
	.local .align 4 .b8 	__local_depot0[16];
	.reg .b64 	%SP;
	.reg .b64 	%SPL;
	.reg .pred 	%p<4>;
	.reg .b32 	%r<20>;
	.reg .b16 	%rs<4>;
	.reg .b64 	%rd<10>;

	mov.u64 	%SPL, __local_depot0;
	cvta.local.u64 	%SP, %SPL;
	ld.param.u64 	%rd1, [out];
	ld.param.u32 	%r1, [s+8];
	ld.param.s32 	%rd5, [k];
	mov.u32 	%r2, %tid.x;
	st.local.u32 	[%SPL], %r2;
	st.local.u32 	[%SPL+4], %r1;
	add.u64 	%rd2, %SP, 4;
	ld.u32 	%r3, [%rd2];
	ld.u32 	%r4, [%SP];
	add.s32 	%r5, %r3, %r4;
	setp.lt.u32 	%p1, %r2, 4;
	@!%p1 bra 	$L__skip;
	add.s32 	%r5, %r5, 1000;
$L__skip:
	mov.b32 	%r6, 0x00050003;
	mov.b32 	{%rs1, %rs2}, %r6;
	cvt.u32.u16 	%r7, %rs2;
	add.s32 	%r5, %r5, %r7;
	bfe.u32 	%r8, %r6, 16, 4;
	add.s32 	%r5, %r5, %r8;
	shl.b32 	%r9, %r5, 40;
	add.s32 	%r5, %r5, %r9;
	mul.wide.u32 	%rd3, %r2, 4;
	add.s64 	%rd4, %rd1, %rd3;
	st.global.u32 	[%rd4], %r5;
	setp.eq.s64 	%p2, %rd5, -2;
	@%p2 st.global.u32 	[%rd1+128], %r2;
	ret;
}

.visible .entry noconv(.param .u64 out)
{
	.reg .pred 	%p<2>;
	.reg .b32 	%r<8>;
	mov.u32 	%r1, %tid.x;
	setp.lt.u32 	%p1, %r1, 16;
	@%p1 bra 	$L__a;
	mov.b32 	%r2, -1;
	shfl.sync.bfly.b32 	%r3, %r1, 1, 31, %r2;
$L__a:
	ret;
}
"#;

#[test]
fn hand_written_local_generic_params_and_vectors() {
    let mut mem = Memory::new(1);
    let m = Module::load(HAND, &mut mem, 0).unwrap();
    let k = &m.kernels()[0];
    assert_eq!(
        k.params,
        vec![
            Param { offset: 0, size: 8 },
            Param {
                offset: 8,
                size: 16
            },
            Param {
                offset: 24,
                size: 4
            }
        ]
    );
    let out = mem.alloc(0, 33 * 4);
    let mut p = vec![0u8; 28];
    p[0..8].copy_from_slice(&out.to_le_bytes());
    p[16..20].copy_from_slice(&77u32.to_le_bytes());
    p[24..28].copy_from_slice(&(-2i32).to_le_bytes());
    let mut st = KernelStats::default();
    m.run(
        0,
        &Launch {
            grid: [1, 1, 1],
            block: [8, 2, 2],
            shared_dynamic: 0,
            params: &p,
        },
        &mut mem,
        &mut st,
    )
    .unwrap();
    let b = mem.bytes(out, 33 * 4).unwrap();
    for t in 0..8u32 {
        let v = u32::from_le_bytes(b[t as usize * 4..t as usize * 4 + 4].try_into().unwrap());
        let want = 77 + t + if t < 4 { 1000 } else { 0 } + 5 + 5;
        assert_eq!(v, want, "thread {t}");
    }
    assert!(st.sectors_written >= 1);
}

#[test]
fn shfl_in_divergent_code_faults() {
    let mut mem = Memory::new(1);
    let m = Module::load(HAND, &mut mem, 0).unwrap();
    let out = mem.alloc(0, 8);
    let mut st = KernelStats::default();
    let e = m
        .run(
            1,
            &Launch {
                grid: [1, 1, 1],
                block: [32, 1, 1],
                shared_dynamic: 0,
                params: &out.to_le_bytes(),
            },
            &mut mem,
            &mut st,
        )
        .unwrap_err();
    assert!(
        e.message.contains("shfl.sync with lanes not converged"),
        "{e}"
    );
    assert_eq!(e.kernel, "noconv");
}

#[test]
fn unsupported_forms_are_load_errors() {
    let mut mem = Memory::new(1);
    for (bad, what) in [
        ("add.s32 	%r5, %r3, %r4;", "frobnicate"),
        ("add.cc.s32 	%r5, %r3, %r4;", ".cc"),
        ("call.uni foo, (%r1);", "call"),
        ("ld.global.L1::evict_last.u32 	%r3, [%rd2];", "evict_last"),
    ] {
        let text = HAND.replace(
            "add.s32 	%r5, %r3, %r4;",
            if what == "frobnicate" {
                "frobnicate.s32 %r5, %r3;"
            } else {
                bad
            },
        );
        let e = Module::load(&text, &mut mem, 0).err().expect("an error");
        assert!(
            e.contains(what) && e.contains("hand") && e.contains("line 31"),
            "{e}"
        );
    }
}

fn lcg(s: &mut u64) -> u32 {
    *s = s
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    (*s >> 33) as u32
}

/// quantize_q8_1 and mmvq_q8_0 from the real NVRTC PTX against a CPU reference, and the speed.
#[test]
#[ignore]
fn real_matvec_q8_0() {
    let rows: usize = std::env::var("PTX_BENCH_ROWS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2048);
    for sm in [70, 61, 60] {
        let text = std::fs::read_to_string(format!("/work/ptx/matvec_sm{sm}.ptx")).unwrap();
        let mut mem = Memory::new(1);
        let m = Module::load(&text, &mut mem, 0).unwrap();
        let (cols, ntok) = (1024usize, 1usize);
        let mut seed = 42u64;
        let xs: Vec<f32> = (0..cols * ntok)
            .map(|_| (lcg(&mut seed) % 2001) as f32 / 1000.0 - 1.0)
            .collect();
        let x = mem.alloc(0, (xs.len() * 4) as u64);
        put_f32(&mut mem, x, &xs);
        let nb = cols / 32;
        let q = mem.alloc(0, (nb * ntok * 40) as u64);
        launch_run(
            &m,
            &mut mem,
            "quantize_q8_1",
            [(nb as u32).div_ceil(8), ntok as u32, 1],
            [256, 1, 1],
            0,
            &[x, cols as u64, q, nb as u64, cols as u64],
        )
        .unwrap();
        let qb = mem.bytes(q, (nb * 40) as u64).unwrap().to_vec();
        for b in 0..nb {
            let blk = &xs[b * 32..b * 32 + 32];
            let amax = blk.iter().fold(0f32, |a, v| a.max(v.abs()));
            let d = amax / 127.0;
            let gd = f32::from_le_bytes(qb[b * 40..b * 40 + 4].try_into().unwrap());
            assert_eq!(gd, d, "block {b}");
            let mut sum = 0;
            for l in 0..32 {
                let want = if amax == 0.0 {
                    0
                } else {
                    (blk[l] / d).round() as i32
                };
                assert_eq!(qb[b * 40 + 8 + l] as i8 as i32, want, "block {b} lane {l}");
                sum += want;
            }
            let gs = f32::from_le_bytes(qb[b * 40 + 4..b * 40 + 8].try_into().unwrap());
            assert_eq!(gs, d * sum as f32);
        }
        // Q8_0 weights.
        let row_bytes = nb * 34;
        let mut wb = vec![0u8; rows * row_bytes];
        for r in 0..rows {
            for b in 0..nb {
                let o = r * row_bytes + b * 34;
                let d = half::f16::from_f32((lcg(&mut seed) % 100 + 1) as f32 / 5000.0);
                wb[o..o + 2].copy_from_slice(&d.to_bits().to_le_bytes());
                for l in 0..32 {
                    wb[o + 2 + l] = lcg(&mut seed) as u8;
                }
            }
        }
        let w = mem.alloc(0, wb.len() as u64);
        mem.bytes_mut(w, wb.len() as u64)
            .unwrap()
            .copy_from_slice(&wb);
        let out = mem.alloc(0, (rows * 4) as u64);
        let t0 = std::time::Instant::now();
        let st = launch_run(
            &m,
            &mut mem,
            "mmvq_q8_0",
            [(rows as u32).div_ceil(4), 1, 1],
            [128, 1, 1],
            0,
            &[
                w,
                row_bytes as u64,
                q,
                nb as u64,
                out,
                rows as u64,
                cols as u64,
                rows as u64,
                ntok as u64,
            ],
        )
        .unwrap();
        let dt = t0.elapsed().as_secs_f64();
        let o = get_f32(&mem, out, rows);
        for r in 0..rows {
            let mut acc = 0f64;
            for b in 0..nb {
                let o = r * row_bytes + b * 34;
                let wd =
                    half::f16::from_bits(u16::from_le_bytes([wb[o], wb[o + 1]])).to_f32() as f64;
                let xd = f32::from_le_bytes(qb[b * 40..b * 40 + 4].try_into().unwrap()) as f64;
                let mut s = 0i32;
                for l in 0..32 {
                    s += wb[o + 2 + l] as i8 as i32 * qb[b * 40 + 8 + l] as i8 as i32;
                }
                acc += wd * xd * s as f64;
            }
            assert!(
                (o[r] as f64 - acc).abs() <= 1e-4 * acc.abs().max(1.0),
                "sm{sm} row {r}: {} vs {acc}",
                o[r]
            );
        }
        eprintln!(
            "sm{sm}: mmvq_q8_0 {rows}x{cols}: {:.3} s, {} warp instructions ({:.1} M warp-instr/s, ~{:.0} M lane-instr/s), {:.1} ns per weight; stats {st:?}",
            dt,
            st.warp_instructions,
            st.warp_instructions as f64 / dt / 1e6,
            st.warp_instructions as f64 * 32.0 / dt / 1e6,
            dt * 1e9 / (rows * cols) as f64
        );
    }
}

/// rms_norm from the real NVRTC PTX against a CPU reference.
#[test]
#[ignore]
fn real_rms_norm() {
    for sm in [70, 60] {
        let text = std::fs::read_to_string(format!("/work/ptx/norm_sm{sm}.ptx")).unwrap();
        let mut mem = Memory::new(1);
        let m = Module::load(&text, &mut mem, 0).unwrap();
        let (ntok, len) = (3usize, 576usize);
        let mut seed = 7u64;
        let xs: Vec<f32> = (0..ntok * len)
            .map(|_| (lcg(&mut seed) % 2001) as f32 / 500.0 - 2.0)
            .collect();
        let ws: Vec<f32> = (0..len)
            .map(|_| (lcg(&mut seed) % 1000) as f32 / 1000.0)
            .collect();
        let (x, w, out) = (
            mem.alloc(0, (xs.len() * 4) as u64),
            mem.alloc(0, (len * 4) as u64),
            mem.alloc(0, (xs.len() * 4) as u64),
        );
        put_f32(&mut mem, x, &xs);
        put_f32(&mut mem, w, &ws);
        let eps = 1e-5f32;
        launch_run(
            &m,
            &mut mem,
            "rms_norm",
            [ntok as u32, 1, 1],
            [256, 1, 1],
            0,
            &[
                x,
                len as u64,
                w,
                out,
                len as u64,
                len as u64,
                1,
                eps.to_bits() as u64,
            ],
        )
        .unwrap();
        let o = get_f32(&mem, out, xs.len());
        for t in 0..ntok {
            let r = &xs[t * len..(t + 1) * len];
            let ss: f64 = r.iter().map(|v| (*v as f64) * (*v as f64)).sum();
            let scale = 1.0 / (ss / len as f64 + eps as f64).sqrt();
            for i in 0..len {
                let want = r[i] as f64 * scale * ws[i] as f64;
                assert!(
                    (o[t * len + i] as f64 - want).abs() < 1e-5 * want.abs().max(1.0),
                    "{t} {i}: {} vs {want}",
                    o[t * len + i]
                );
            }
        }
    }
}
