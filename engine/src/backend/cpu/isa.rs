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

    /// The instruction set `detect` settles on (panics on a bad
    /// `IGPO_CPU_ISA`; the binary checks it first with [`Isa::from_env`]).
    fn choose() -> Isa {
        Isa::from_env().unwrap_or_else(|e| panic!("{e}"))
    }

    /// The instruction set `IGPO_CPU_ISA` asks for (unset or empty: the best
    /// this CPU has), or one line naming the variable, its value and the
    /// accepted values.
    pub fn from_env() -> Result<Isa, String> {
        let best = Isa::available_here().pop().unwrap_or(Isa::Portable);
        let asked = match std::env::var("IGPO_CPU_ISA") {
            Err(std::env::VarError::NotPresent) => return Ok(best),
            Ok(v) if v.is_empty() => return Ok(best),
            Ok(v) if v == "avx512" => Isa::Avx512,
            Ok(v) if v == "avx2" => Isa::Avx2,
            Ok(v) if v == "portable" => Isa::Portable,
            other => {
                let shown = match other {
                    Ok(v) => v,
                    Err(_) => "(not UTF-8)".to_string(),
                };
                return Err(format!(
                    "IGPO_CPU_ISA={shown:?}: expected avx512, avx2 or portable (or unset: the best this CPU has)"
                ));
            }
        };
        if !Isa::available_here().contains(&asked) {
            return Err(format!(
                "IGPO_CPU_ISA={:?}: this CPU cannot run it (it has {best:?}); use {}",
                std::env::var("IGPO_CPU_ISA").unwrap_or_default(),
                Isa::available_here()
                    .iter()
                    .map(|i| i.env_name())
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
        Ok(asked)
    }

    /// The `IGPO_CPU_ISA` value that asks for this instruction set.
    fn env_name(self) -> &'static str {
        match self {
            Isa::Avx512 => "avx512",
            Isa::Avx2 => "avx2",
            Isa::Portable => "portable",
        }
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

/// Defines `fn $name(args) -> ret { body }` whose body is compiled three
/// times (AVX-512F, AVX2 + FMA, portable) and run for the process's
/// [`Isa`]: loops over slices then vectorize at the widest width. The body
/// is the same IEEE operations in the same order on every instruction set
/// (Rust never contracts `a * b + c` into an FMA), so the results are the
/// same bits wherever it runs; a body that wants lanes writes them out.
/// `fn name [name_on] (...)` also defines `name_on(isa, args)`, which runs
/// the body compiled for `isa` (tests compare the instruction sets with it).
macro_rules! simd_fn {
    ($(#[$doc:meta])* $vis:vis fn $name:ident [$on:ident] ($($arg:ident: $ty:ty),* $(,)?) $(-> $ret:ty)? $body:block) => {
        $(#[$doc])*
        $vis fn $name($($arg: $ty),*) $(-> $ret)? {
            $on($crate::backend::cpu::isa::Isa::detect(), $($arg),*)
        }

        /// The body compiled for `isa` (which this CPU must run).
        $vis fn $on(isa: $crate::backend::cpu::isa::Isa, $($arg: $ty),*) $(-> $ret)? {
            #[inline(always)]
            fn body($($arg: $ty),*) $(-> $ret)? $body
            #[cfg(target_arch = "x86_64")]
            #[target_feature(enable = "avx512f")]
            unsafe fn avx512($($arg: $ty),*) $(-> $ret)? {
                body($($arg),*)
            }
            #[cfg(target_arch = "x86_64")]
            #[target_feature(enable = "avx2,fma")]
            unsafe fn avx2($($arg: $ty),*) $(-> $ret)? {
                body($($arg),*)
            }
            match isa {
                // SAFETY: callers pass an instruction set this CPU runs
                // (`Isa::detect`, `Isa::available`).
                #[cfg(target_arch = "x86_64")]
                $crate::backend::cpu::isa::Isa::Avx512 => unsafe { avx512($($arg),*) },
                // SAFETY: as above.
                #[cfg(target_arch = "x86_64")]
                $crate::backend::cpu::isa::Isa::Avx2 => unsafe { avx2($($arg),*) },
                _ => body($($arg),*),
            }
        }
    };
}
pub(super) use simd_fn;
