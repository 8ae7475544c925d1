//! `jaas_jrsonnet`: jrsonnet (Jsonnet in Rust) for jaas-py.
//!
//! One function, [`evaluate_file`], a drop-in for how jaas-py calls
//! `rjsonnet.evaluate_file`: every file (the entry file included) comes from
//! a Python import callback, the evaluation runs on a thread of this module's
//! own with a [`STACK_SIZE`] stack and without the GIL, and every Jsonnet error
//! becomes a `JsonnetError` whose message lists the stack frames as
//! `<virtual path>:line:col` lines, the layout rjsonnet prints.

use std::{
    any::Any,
    cell::RefCell,
    collections::{HashMap, HashSet},
    fmt,
    hash::{Hash, Hasher},
    path::{Path, PathBuf},
    sync::Arc,
    thread,
};

use jrsonnet_evaluator::{
    AsPathLike, IStr, ImportResolver, ResolvePath, SourcePath, State, Thunk, Val,
    analyze::DiagLevel,
    apply_tla,
    error::{Error, ErrorKind, StackTraceElement},
    manifest::JsonFormat,
    stack::limit_stack_depth,
    tla::TlaArg,
    trace::{CompactFormat, PathResolver, TraceFormat},
    val::ThunkValue,
    with_state,
};
use jrsonnet_gcmodule::{Acyclic, Trace, Tracer};
use jrsonnet_ir::SourcePathT;
use pyo3::{
    create_exception,
    exceptions::{PyMemoryError, PyRuntimeError},
    panic::PanicException,
    prelude::*,
    types::{PyBytes, PyString},
};

/// The jrsonnet release this module is built with (every jrsonnet crate is
/// pinned to it in Cargo.toml).
const JRSONNET_VERSION: &str = "0.5.0-pre98";

/// Stack of the thread each evaluation runs on. Deeply nested literals and
/// deep recursion (with `max_stack` raised) recurse natively in the parser,
/// the evaluator and the manifester; jrsonnet grows the evaluator's stack on
/// demand, but not everywhere, so the thread starts with a large one. Only
/// the pages actually touched are committed; the whole size is reserved as
/// address space (it counts against `RLIMIT_AS`).
const STACK_SIZE: usize = 512 * 1024 * 1024;

/// Stack frames kept in a message: the first and the last half of this,
/// with a `...` line between (a stack overflow at `max_stack` = 200,000
/// would otherwise print 200,000 lines).
const MAX_FRAMES: usize = 200;

/// The description of the frame jrsonnet pushes where a file fails to parse.
const PARSE_FRAME: &str = "parse imported";

create_exception!(
    jaas_jrsonnet,
    JsonnetError,
    PyRuntimeError,
    "A Jsonnet error: syntax, static, runtime or import. The message is the error text, then one indented line per stack frame."
);

/// A file served by the import callback, named by the virtual path it returned.
#[derive(Acyclic, Hash, PartialEq, Eq, Debug)]
struct CallbackFile(PathBuf);

impl fmt::Display for CallbackFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0.display())
    }
}

/// The identity methods of `SourcePathT` (downcast, hash, equality, debug),
/// the same for every source path type that is `Hash + Eq + Debug`.
macro_rules! source_path_identity {
    () => {
        fn as_any(&self) -> &dyn Any {
            self
        }
        fn dyn_hash(&self, mut hasher: &mut dyn Hasher) {
            self.hash(&mut hasher);
        }
        fn dyn_eq(&self, other: &dyn SourcePathT) -> bool {
            other.as_any().downcast_ref::<Self>() == Some(self)
        }
        fn dyn_debug(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            fmt::Debug::fmt(self, f)
        }
    };
}

impl SourcePathT for CallbackFile {
    fn is_default(&self) -> bool {
        false
    }
    fn path(&self) -> Option<&Path> {
        Some(&self.0)
    }
    source_path_identity!();
}

/// Code given as a TLA or an external variable, named as go-jsonnet names it
/// (`<top-level-arg:NAME>`, `<extvar:NAME>`). It has no directory: its
/// imports resolve from the default base, as the entry file's own lookup.
#[derive(Acyclic, Hash, PartialEq, Eq, Debug)]
struct CodeSnippet {
    name: String,
    code: String,
}

impl fmt::Display for CodeSnippet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name)
    }
}

impl SourcePathT for CodeSnippet {
    fn is_default(&self) -> bool {
        true
    }
    fn path(&self) -> Option<&Path> {
        None
    }
    source_path_identity!();
}

/// The base directory passed to the callback for the entry file and for
/// imports inside TLA / external variable code (rjsonnet passes "." for the
/// entry file; `InMemoryImporter` reads any non-virtual base as the snippet root).
const DEFAULT_BASE: &str = ".";

/// Resolves every import through the Python callback.
///
/// The callback returns the content with the path; it is kept until
/// jrsonnet loads that path (once: jrsonnet caches files by resolved path),
/// and dropped when the path was loaded already.
struct CallbackResolver {
    callback: Arc<Py<PyAny>>,
    pending: RefCell<HashMap<PathBuf, Vec<u8>>>,
    loaded: RefCell<HashSet<PathBuf>>,
}

// The resolver holds no jrsonnet values, so it cannot be part of a cycle.
impl Trace for CallbackResolver {
    fn trace(&self, _tracer: &mut Tracer) {}
    fn is_type_tracked() -> bool {
        false
    }
}
// SAFETY: no field holds a `Cc`, so no cycle can pass through the resolver.
unsafe impl Acyclic for CallbackResolver {}

fn callback_error(message: String) -> Error {
    ErrorKind::ImportCallbackError(message).into()
}

impl CallbackResolver {
    /// `import_callback(base, rel) -> (path, bytes | str)`, with the GIL.
    fn call(&self, base: &str, rel: &str) -> Result<(String, Vec<u8>), Error> {
        Python::attach(|py| {
            let returned = self
                .callback
                .call1(py, (base, rel))
                .map_err(|err| callback_error(describe_exception(py, &err)))?;
            let returned = returned.bind(py);
            let Ok((path, content)) = returned.extract::<(String, Bound<'_, PyAny>)>() else {
                return Err(callback_error(format!(
                    "import_callback error: import_callback must return (str, bytes | str), got {}",
                    type_name(returned)
                )));
            };
            let content = if let Ok(bytes) = content.cast::<PyBytes>() {
                bytes.as_bytes().to_vec()
            } else if let Ok(text) = content.cast::<PyString>() {
                text.to_str()
                    .map_err(|err| callback_error(describe_exception(py, &err)))?
                    .as_bytes()
                    .to_vec()
            } else {
                return Err(callback_error(format!(
                    "import_callback error: import_callback returned {} content for {path}, not bytes or str",
                    type_name(&content)
                )));
            };
            Ok((path, content))
        })
    }
}

fn type_name(value: &Bound<'_, PyAny>) -> String {
    value
        .get_type()
        .name()
        .map_or_else(|_| "?".to_owned(), |name| name.to_string())
}

/// `import_callback error: <ExceptionType>: <message>`, as rjsonnet words it
/// (`jaas.evaluator.importer.user_facing` removes that prefix for its own errors).
fn describe_exception(py: Python<'_>, err: &PyErr) -> String {
    let kind = err
        .get_type(py)
        .name()
        .map_or_else(|_| "?".to_owned(), |name| name.to_string());
    let message = err
        .value(py)
        .str()
        .map_or_else(|_| "<unprintable>".to_owned(), |s| s.to_string());
    format!("import_callback error: {kind}: {message}")
}

impl ImportResolver for CallbackResolver {
    fn resolve_from(
        &self,
        from: &SourcePath,
        path: &dyn AsPathLike,
    ) -> jrsonnet_evaluator::Result<SourcePath> {
        let base = if let Some(file) = from.downcast_ref::<CallbackFile>() {
            match file.0.parent() {
                Some(dir) if !dir.as_os_str().is_empty() => dir.to_string_lossy().into_owned(),
                _ => DEFAULT_BASE.to_owned(),
            }
        } else if from.is_default() {
            DEFAULT_BASE.to_owned()
        } else {
            return Err(callback_error(format!("cannot import from {from}")));
        };
        let rel = match path.as_path() {
            ResolvePath::Str(s) => s.to_owned(),
            ResolvePath::Path(p) => p.to_string_lossy().into_owned(),
        };
        let (resolved, content) = self.call(&base, &rel)?;
        let resolved = PathBuf::from(resolved);
        if !self.loaded.borrow().contains(&resolved) {
            self.pending
                .borrow_mut()
                .entry(resolved.clone())
                .or_insert(content);
        }
        Ok(SourcePath::new(CallbackFile(resolved)))
    }

    fn load_file_contents(&self, resolved: &SourcePath) -> jrsonnet_evaluator::Result<Vec<u8>> {
        if let Some(file) = resolved.downcast_ref::<CallbackFile>() {
            let content = self.pending.borrow_mut().remove(&file.0);
            self.loaded.borrow_mut().insert(file.0.clone());
            return content.ok_or_else(|| ErrorKind::ResolvedFileNotFound(resolved.clone()).into());
        }
        if let Some(snippet) = resolved.downcast_ref::<CodeSnippet>() {
            return Ok(snippet.code.as_bytes().to_vec());
        }
        Err(ErrorKind::ResolvedFileNotFound(resolved.clone()).into())
    }
}

/// Evaluates a TLA's or an external variable's code once, when first used.
#[derive(Trace)]
struct CodeThunk(SourcePath);

impl ThunkValue for CodeThunk {
    type Output = Val;
    fn get(&self) -> jrsonnet_evaluator::Result<Val> {
        with_state(|state| state.import_resolved(self.0.clone()))
    }
}

fn code_arg(name: String, code: String) -> TlaArg {
    TlaArg::Lazy(Thunk::new(CodeThunk(SourcePath::new(CodeSnippet {
        name,
        code,
    }))))
}

/// What one evaluation needs; sent to the evaluation thread.
struct Job {
    path: String,
    callback: Arc<Py<PyAny>>,
    tla_vars: HashMap<String, String>,
    tla_codes: HashMap<String, String>,
    ext_vars: HashMap<String, String>,
    ext_codes: HashMap<String, String>,
    max_stack: usize,
}

impl Job {
    /// Evaluates on the current thread: `Ok(json)` or `Err(formatted error)`.
    fn run(self) -> Result<String, String> {
        let result = self.evaluate().map_err(format_error);
        // Values are gone: free the reference cycles they left (jrsonnet's
        // collector is per thread, and this thread ends now).
        jrsonnet_gcmodule::collect_thread_cycles();
        result
    }

    fn evaluate(self) -> jrsonnet_evaluator::Result<String> {
        let stdlib = jrsonnet_stdlib::ContextInitializer::new(PathResolver::Absolute);
        for (name, value) in self.ext_vars {
            stdlib.add_ext_str(name.into(), value.into());
        }
        for (name, code) in self.ext_codes {
            let arg = code_arg(format!("<extvar:{name}>"), code);
            stdlib.settings_mut().ext_vars.insert(name.into(), arg);
        }
        // IStr hashes by its interned pointer, which never changes (jrsonnet
        // allows this lint crate-wide for the same reason).
        #[allow(clippy::mutable_key_type)]
        let mut tlas: HashMap<IStr, TlaArg> = HashMap::new();
        for (name, value) in self.tla_vars {
            tlas.insert(name.into(), TlaArg::String(value.into()));
        }
        for (name, code) in self.tla_codes {
            let arg = code_arg(format!("<top-level-arg:{name}>"), code);
            tlas.insert(name.into(), arg);
        }

        let mut builder = State::builder();
        builder
            .import_resolver(CallbackResolver {
                callback: self.callback,
                pending: RefCell::default(),
                loaded: RefCell::default(),
            })
            .context_initializer(stdlib);
        let state = builder.build();
        let _entered = state.enter();
        let _depth = limit_stack_depth(self.max_stack);

        let value = state.import(self.path.as_str())?;
        let value = apply_tla(&tlas, value)?;
        value.manifest(JsonFormat::minify())
    }
}

/// Formats an error as rjsonnet does (jrsonnet's compact, vanilla-like
/// format: the error, then `    <path>:line:col[-col]: <description>` per
/// frame), with static-analysis errors as frames (the compact format omits
/// their positions; warnings stay in the first line only), a syntax error's
/// position printed once, and the middle of a long trace elided.
fn format_error(mut error: Error) -> String {
    if let ErrorKind::StaticAnalysisError(diagnostics) = error.error() {
        let frames: Vec<StackTraceElement> = diagnostics
            .iter()
            .filter(|diagnostic| matches!(diagnostic.level, DiagLevel::Error))
            .filter_map(|diagnostic| {
                diagnostic.span.clone().map(|span| StackTraceElement {
                    location: Some(span),
                    desc: diagnostic.message.clone(),
                })
            })
            .collect();
        error.trace_mut().0.splice(0..0, frames);
    }
    if let ErrorKind::ImportSyntaxError { error: syntax, .. } = error.error() {
        // The compact format prints the syntax error's position under the
        // message already; jrsonnet also pushes a "parse imported" frame at
        // the same position. Frames of the importing files stay.
        let position = Some(syntax.location.clone());
        error
            .trace_mut()
            .0
            .retain(|frame| !(frame.desc == PARSE_FRAME && frame.location == position));
    }
    let frames = &mut error.trace_mut().0;
    if frames.len() > MAX_FRAMES {
        let keep = MAX_FRAMES / 2;
        let elided = frames.len() - MAX_FRAMES;
        frames.splice(
            keep..keep + elided,
            [StackTraceElement {
                location: None,
                desc: "...".to_owned(),
            }],
        );
    }
    let format = CompactFormat {
        resolver: PathResolver::Absolute,
        max_trace: MAX_FRAMES,
        padding: 4,
    };
    format
        .format(&error)
        .unwrap_or_else(|_| error.error().to_string())
}

fn panic_message(payload: &(dyn Any + Send)) -> String {
    if let Some(message) = payload.downcast_ref::<&str>() {
        (*message).to_owned()
    } else if let Some(message) = payload.downcast_ref::<String>() {
        message.clone()
    } else {
        "unknown panic".to_owned()
    }
}

enum Failure {
    Jsonnet(String),
    Panic(String),
    Spawn(std::io::Error),
}

/// Evaluate the Jsonnet file `path` and return its value as JSON text.
///
/// The entry file is loaded as `import_callback(".", path)`; every `import`,
/// `importstr` and `importbin` as `import_callback(<directory of the
/// importing file>, <import text>)`, which returns `(resolved path,
/// content)`. The evaluation runs on a thread of its own (512 MiB stack)
/// without the GIL; the callback runs with it.
#[pyfunction]
#[pyo3(signature = (
    path, *, import_callback, tla_vars=None, tla_codes=None, ext_vars=None, ext_codes=None,
    max_stack=500,
))]
#[allow(clippy::too_many_arguments)]
fn evaluate_file(
    py: Python<'_>,
    path: String,
    import_callback: Py<PyAny>,
    tla_vars: Option<HashMap<String, String>>,
    tla_codes: Option<HashMap<String, String>>,
    ext_vars: Option<HashMap<String, String>>,
    ext_codes: Option<HashMap<String, String>>,
    max_stack: usize,
) -> PyResult<String> {
    let callback = Arc::new(import_callback);
    let job = Job {
        path,
        callback: Arc::clone(&callback),
        tla_vars: tla_vars.unwrap_or_default(),
        tla_codes: tla_codes.unwrap_or_default(),
        ext_vars: ext_vars.unwrap_or_default(),
        ext_codes: ext_codes.unwrap_or_default(),
        max_stack,
    };
    let outcome = py.detach(move || {
        let handle = thread::Builder::new()
            .name("jaas-jrsonnet".to_owned())
            .stack_size(STACK_SIZE)
            .spawn(move || job.run())
            .map_err(Failure::Spawn)?;
        match handle.join() {
            Ok(Ok(json)) => Ok(json),
            Ok(Err(message)) => Err(Failure::Jsonnet(message)),
            Err(payload) => Err(Failure::Panic(panic_message(payload.as_ref()))),
        }
    });
    // The evaluation thread's reference is gone; drop ours with the GIL held.
    drop(callback);
    outcome.map_err(|failure| match failure {
        Failure::Jsonnet(message) => JsonnetError::new_err(message),
        Failure::Panic(message) => PanicException::new_err(format!("jrsonnet panicked: {message}")),
        Failure::Spawn(err) => PyMemoryError::new_err(format!(
            "could not start the evaluation thread with a {} MiB stack: {err}",
            STACK_SIZE >> 20
        )),
    })
}

/// `jaas-jrsonnet <version> (jrsonnet <version>)`.
#[pyfunction]
fn version() -> String {
    format!(
        "jaas-jrsonnet {} (jrsonnet {JRSONNET_VERSION})",
        env!("CARGO_PKG_VERSION")
    )
}

#[pymodule]
fn jaas_jrsonnet(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(evaluate_file, m)?)?;
    m.add_function(wrap_pyfunction!(version, m)?)?;
    m.add("JsonnetError", m.py().get_type::<JsonnetError>())?;
    m.add("STACK_SIZE", STACK_SIZE)?;
    m.add("JRSONNET_VERSION", JRSONNET_VERSION)?;
    Ok(())
}
