//! A pool of instances of one component: `call` takes `&self`, runs on an
//! idle instance (or makes a new one, up to the limit) and throws away any
//! instance whose call failed at the wasm level.

use std::sync::{Arc, Condvar, Mutex};

use wasmtime::component::{InstancePre, Linker};
use wasmtime::Store;

use super::host::{classify, new_store, one_line, ticks, HostState, PluginHost, World};
use super::http::HttpGate;
use super::kinds::Described;
use super::schema::Schema;
use super::{PluginError, PluginSpec};

/// One world's bindings, as the pool needs them.
pub(crate) trait Kind: Sized + Send + 'static {
    const WORLD: World;
    type Pre: Send + Sync + 'static;
    fn linker() -> &'static Linker<HostState>;
    fn pre(ip: InstancePre<HostState>) -> wasmtime::Result<Self::Pre>;
    fn instantiate(pre: &Self::Pre, store: &mut Store<HostState>) -> wasmtime::Result<Self>;
    /// `describe`: must work before `init`.
    fn describe(&self, store: &mut Store<HostState>) -> wasmtime::Result<Described>;
    fn init(
        &self,
        store: &mut Store<HostState>,
        config: &str,
    ) -> wasmtime::Result<Result<(), String>>;
}

pub(crate) struct Inst<K> {
    pub(crate) store: Store<HostState>,
    pub(crate) guest: K,
}

struct State<K> {
    idle: Vec<Inst<K>>,
    live: usize,
}

pub(crate) struct Pool<K: Kind> {
    /// How errors name this plugin: its tool name or file.
    pub(crate) label: String,
    pub(crate) spec: PluginSpec,
    /// What the plugin said about itself, before its first `init`.
    pub(crate) described: Described,
    /// A tool's `parameters_schema`, compiled (every call is checked).
    pub(crate) arguments_schema: Option<Schema>,
    config: String,
    pre: K::Pre,
    http: Arc<HttpGate>,
    max: usize,
    state: Mutex<State<K>>,
    cv: Condvar,
}

/// Compiles the component, checks its world and links it (no instance yet).
pub(crate) fn prepare<K: Kind>(
    host: &PluginHost,
    spec: &PluginSpec,
) -> Result<K::Pre, PluginError> {
    let component = host.component(&spec.path)?;
    let world = host.world_of(&spec.path, &component)?;
    if world != K::WORLD {
        return Err(PluginError::WrongWorld {
            path: spec.path.clone(),
            found: world,
            expected: K::WORLD,
        });
    }
    let link = |e: wasmtime::Error| PluginError::Link {
        path: spec.path.clone(),
        message: one_line(&e),
    };
    let ip = K::linker().instantiate_pre(&component).map_err(link)?;
    K::pre(ip).map_err(link)
}

/// The HTTP policy of `spec`: a bad `allow_http` entry, or one (or a
/// `description`) on a plugin that is not a tool, is a [`PluginError::Spec`].
pub(crate) fn http_gate(spec: &PluginSpec, world: World) -> Result<Arc<HttpGate>, PluginError> {
    let bad = |message: String| PluginError::Spec {
        plugin: spec.path.display().to_string(),
        message,
    };
    if world != World::Tool && !spec.allow_http.is_empty() {
        return Err(bad(format!(
            "allow_http is for tool plugins only (this is a {world} plugin)"
        )));
    }
    if world != World::Tool && spec.description.is_some() {
        return Err(bad(format!(
            "description is for tool plugins only (this is a {world} plugin)"
        )));
    }
    HttpGate::new(spec).map_err(bad)
}

impl<K: Kind> Pool<K> {
    /// Prepares the component and makes one instance: asks it to
    /// `describe` itself, checks the schemas it declares and the config
    /// against its `config_schema`, then `init`s it. A bad schema or config
    /// fails here, at load, before the plugin's `init` sees the config.
    pub(crate) fn load(
        host: &PluginHost,
        spec: &PluginSpec,
        label: String,
    ) -> Result<Pool<K>, PluginError> {
        let config = serde_json::to_string(&spec.config).map_err(|e| PluginError::Config {
            plugin: label.clone(),
            message: e.to_string(),
        })?;
        let http = http_gate(spec, K::WORLD)?;
        let pre = prepare::<K>(host, spec)?;
        let mut pool = Pool {
            label,
            spec: spec.clone(),
            described: Described::default(),
            arguments_schema: None,
            config,
            pre,
            http,
            max: spec.limits.instances.max(1),
            state: Mutex::new(State {
                idle: vec![],
                live: 0,
            }),
            cv: Condvar::new(),
        };
        let mut first = pool.instantiate()?;
        let limits = &pool.spec.limits;
        first.store.set_epoch_deadline(ticks(limits.init_timeout));
        pool.described = K::describe(&first.guest, &mut first.store).map_err(|e| {
            classify(
                &pool.label,
                "describe",
                limits,
                limits.init_timeout,
                &first.store,
                e,
            )
        })?;
        let (config_schema, arguments) = pool.described.schemas(&pool.label)?;
        config_schema
            .check(&pool.spec.config)
            .map_err(|message| PluginError::ConfigSchema {
                plugin: pool.label.clone(),
                message,
            })?;
        pool.arguments_schema = arguments;
        // An `init` trap quotes only what `init` wrote.
        first.store.data().stderr.clear();
        let first = pool.init(first)?;
        let mut st = pool.lock();
        st.live = 1;
        st.idle.push(first);
        drop(st);
        Ok(pool)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State<K>> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A fresh instance in its own sandbox, not yet `init`ed.
    fn instantiate(&self) -> Result<Inst<K>, PluginError> {
        let limits = &self.spec.limits;
        let mut store = new_store(&self.spec, &self.http)?;
        store.set_epoch_deadline(ticks(limits.init_timeout));
        match K::instantiate(&self.pre, &mut store) {
            Ok(guest) => Ok(Inst { store, guest }),
            Err(e) => Err(classify(
                &self.label,
                "instantiate",
                limits,
                limits.init_timeout,
                &store,
                e,
            )),
        }
    }

    /// Hands the instance its config.
    fn init(&self, mut inst: Inst<K>) -> Result<Inst<K>, PluginError> {
        let limits = &self.spec.limits;
        inst.store.set_epoch_deadline(ticks(limits.init_timeout));
        match inst.guest.init(&mut inst.store, &self.config) {
            Ok(Ok(())) => Ok(inst),
            Ok(Err(message)) => Err(PluginError::Init {
                plugin: self.label.clone(),
                message,
            }),
            Err(e) => Err(classify(
                &self.label,
                "init",
                limits,
                limits.init_timeout,
                &inst.store,
                e,
            )),
        }
    }

    fn create(&self) -> Result<Inst<K>, PluginError> {
        self.init(self.instantiate()?)
    }

    fn checkout(&self) -> Result<Inst<K>, PluginError> {
        let mut st = self.lock();
        loop {
            if let Some(inst) = st.idle.pop() {
                return Ok(inst);
            }
            if st.live < self.max {
                st.live += 1;
                drop(st);
                return self.create().inspect_err(|_| self.retire());
            }
            st = self.cv.wait(st).unwrap_or_else(|e| e.into_inner());
        }
    }

    /// Hands a healthy instance back to the idle list.
    fn checkin(&self, inst: Inst<K>) {
        self.lock().idle.push(inst);
        self.cv.notify_one();
    }

    fn retire(&self) {
        self.lock().live -= 1;
        self.cv.notify_one();
    }

    /// Runs `f` on an instance under the call time limit. A wasm-level
    /// failure (trap, timeout, memory cap) retires the instance.
    pub(crate) fn call<R>(
        &self,
        call: &'static str,
        f: impl FnOnce(&K, &mut Store<HostState>) -> wasmtime::Result<R>,
    ) -> Result<R, PluginError> {
        let mut inst = self.checkout()?;
        let limits = &self.spec.limits;
        inst.store.data_mut().limiter.memory_denied = false;
        inst.store.data().stderr.clear();
        inst.store.set_epoch_deadline(ticks(limits.call_timeout));
        match f(&inst.guest, &mut inst.store) {
            Ok(r) => {
                self.checkin(inst);
                Ok(r)
            }
            Err(e) => {
                let err = classify(
                    &self.label,
                    call,
                    limits,
                    limits.call_timeout,
                    &inst.store,
                    e,
                );
                drop(inst);
                self.retire();
                Err(err)
            }
        }
    }

    /// Makes instances until `n` (at most the limit) are alive, so a
    /// measurement does not pay for their `init`: holding that many at once
    /// makes `checkout` create the missing ones.
    pub(crate) fn fill(&self, n: usize) -> Result<(), PluginError> {
        let held = (0..n.min(self.max))
            .map(|_| self.checkout())
            .collect::<Vec<_>>();
        let mut first_error = None;
        for inst in held {
            match inst {
                Ok(inst) => self.checkin(inst),
                Err(e) => first_error = first_error.or(Some(e)),
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    /// The largest linear-memory footprint among the idle instances.
    pub(crate) fn memory_bytes(&self) -> u64 {
        let st = self.lock();
        let used = st.idle.iter().map(|i| i.store.data().limiter.memory_used);
        used.max().unwrap_or(0)
    }

    /// Instances alive now (idle or busy).
    pub(crate) fn live(&self) -> usize {
        self.lock().live
    }
}
