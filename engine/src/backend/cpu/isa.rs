//! The SIMD instruction set the CPU kernels (`dot.rs`, `packed.rs`) run,
//! chosen once per process so every product of a run sums alike.

#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Isa {
    Avx512,
    Avx2,
    Portable,
}

impl Isa {
    /// The best this CPU has: AVX-512F, else AVX2 + FMA, else portable
    /// loops; `IGPO_CPU_ISA=avx2|portable` asks for a lesser one (to
    /// measure or reproduce another machine's kernel).
    pub fn detect() -> Isa {
        static ISA: std::sync::OnceLock<Isa> = std::sync::OnceLock::new();
        *ISA.get_or_init(|| {
            let isa = Isa::choose();
            tracing::debug!("cpu kernels: {isa:?}");
            isa
        })
    }

    /// The instruction set `detect` settles on.
    fn choose() -> Isa {
        let best = Isa::available_here().pop().unwrap_or(Isa::Portable);
        let asked = match std::env::var("IGPO_CPU_ISA").as_deref() {
            Err(_) | Ok("") => return best,
            Ok("avx512") => Isa::Avx512,
            Ok("avx2") => Isa::Avx2,
            Ok("portable") => Isa::Portable,
            Ok(other) => panic!("IGPO_CPU_ISA={other}: expected avx512, avx2 or portable"),
        };
        assert!(
            Isa::available_here().contains(&asked),
            "IGPO_CPU_ISA: this CPU cannot run {asked:?} (it has {best:?})"
        );
        asked
    }

    /// Every instruction set this CPU can run, best last.
    fn available_here() -> Vec<Isa> {
        let mut isas = vec![Isa::Portable];
        #[cfg(target_arch = "x86_64")]
        {
            if std::arch::is_x86_feature_detected!("avx2")
                && std::arch::is_x86_feature_detected!("fma")
            {
                isas.push(Isa::Avx2);
            }
            if std::arch::is_x86_feature_detected!("avx512f") {
                isas.push(Isa::Avx512);
            }
        }
        isas
    }

    /// Every instruction set this CPU can run, best last (for tests that
    /// compare the kernels).
    #[cfg(test)]
    pub fn available() -> Vec<Isa> {
        Isa::available_here()
    }
}
