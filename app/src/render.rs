//! What draws the stage's canvas (browser only): the WebGL2 compositor where a GPU runs WebGL2
//! with float render targets, else the WASM one ([`crate::compose::live`]) and one
//! `putImageData`. The page's canvas is always a 2D one: WebGL2 draws on a canvas of its own,
//! copied over with one `drawImage` (on a GPU, a copy on the GPU), so a lost WebGL context falls
//! back to WASM on the same canvas. A software WebGL (SwiftShader, llvmpipe: what headless Chromium and machines
//! without a usable GPU get) is slower than the WASM path (docs/benchmarks.md), so it is not used
//! unless asked for: `?compositor=wasm` or `?compositor=webgl2` in the page's address picks one.

use std::sync::Arc;

use wasm_bindgen::JsCast;
use web_sys::HtmlCanvasElement;

use crate::compose::live::{LiveCompositor, Plan, StageLayer};
use crate::gl::GlCompositor;

/// Which compositor draws.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Path {
    Wasm,
    Webgl2,
}

impl Path {
    pub fn label(self) -> &'static str {
        match self {
            Path::Wasm => "WASM",
            Path::Webgl2 => "WebGL2",
        }
    }
}

/// The compositor the page's address asks for (`?compositor=wasm|webgl2`), if any.
pub fn requested_path() -> Option<Path> {
    let search = web_sys::window()?.location().search().ok()?;
    search
        .trim_start_matches('?')
        .split('&')
        .find_map(|kv| match kv.split_once('=') {
            Some(("compositor", "wasm")) => Some(Path::Wasm),
            Some(("compositor", "webgl2")) => Some(Path::Webgl2),
            _ => None,
        })
}

enum Backend {
    Wasm(LiveCompositor),
    /// The compositor and the detached canvas it draws on.
    Gl(Box<GlCompositor>, HtmlCanvasElement),
}

/// One draw's outcome.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Drawn {
    pub plan: Plan,
    /// Compositing alone (for WebGL2, until the GPU finished).
    pub compose_ms: f64,
    /// Compositing and putting the pixels on the canvas.
    pub frame_ms: f64,
}

/// The compositor bound to one canvas element.
pub struct Renderer {
    canvas: HtmlCanvasElement,
    backend: Backend,
    /// Why WebGL2 is not used, when it is not.
    pub gl_unavailable: Option<String>,
}

impl Renderer {
    /// Binds a compositor to `canvas`: the one `path` asks for, else WebGL2 on a GPU, else WASM.
    pub fn new(canvas: &HtmlCanvasElement, path: Option<Path>) -> Self {
        let choice = match path {
            Some(Path::Wasm) => Err("WASM was asked for".to_string()),
            Some(Path::Webgl2) => Ok(()),
            None => gpu_webgl2(),
        };
        let gl = choice.and_then(|()| {
            let own = detached_canvas()?;
            Ok((GlCompositor::new(&own)?, own))
        });
        let (backend, gl_unavailable) = match gl {
            Ok((gl, own)) => (Backend::Gl(Box::new(gl), own), None),
            Err(e) => (wasm(), Some(e)),
        };
        Self {
            canvas: canvas.clone(),
            backend,
            gl_unavailable,
        }
    }

    pub fn path(&self) -> Path {
        match self.backend {
            Backend::Wasm(_) => Path::Wasm,
            Backend::Gl(..) => Path::Webgl2,
        }
    }

    /// Whether this renderer draws on `canvas`.
    pub fn is_for(&self, canvas: &HtmlCanvasElement) -> bool {
        self.canvas.is_same_node(Some(canvas.unchecked_ref()))
    }

    /// Draws the stack (bottom first, hidden layers included).
    pub fn draw(&mut self, width: u32, height: u32, layers: &[StageLayer<'_>]) -> Result<Drawn, String> {
        let t0 = crate::browser::now_ms();
        match &mut self.backend {
            Backend::Wasm(live) => {
                let plan = live.draw(width, height, layers).map_err(|e| e.to_string())?;
                let t1 = crate::browser::now_ms();
                // Nothing drawn changed: the canvas already shows these pixels.
                if plan != Plan::Keep {
                    crate::browser::put_rgba(&self.canvas, width, height, live.pixels())?;
                }
                Ok(Drawn {
                    plan,
                    compose_ms: t1 - t0,
                    frame_ms: crate::browser::now_ms() - t0,
                })
            }
            Backend::Gl(gl, own) => {
                let plan = gl.draw(width, height, layers, true)?;
                let t1 = crate::browser::now_ms();
                if plan != Plan::Keep {
                    crate::browser::copy_canvas(&self.canvas, own, width, height)?;
                }
                Ok(Drawn {
                    plan,
                    compose_ms: t1 - t0,
                    frame_ms: crate::browser::now_ms() - t0,
                })
            }
        }
    }

    /// Draws one straight-alpha image as it is.
    pub fn draw_image(&mut self, width: u32, height: u32, rgba: &Arc<[u8]>) -> Result<(), String> {
        match &mut self.backend {
            Backend::Wasm(live) => {
                live.forget_drawn();
                crate::browser::put_rgba(&self.canvas, width, height, rgba)
            }
            Backend::Gl(gl, own) => {
                gl.draw_image(width, height, rgba)?;
                crate::browser::copy_canvas(&self.canvas, own, width, height)
            }
        }
    }

    /// Makes the caches ready for a change to layer `pivot` (the pointer came onto its row).
    pub fn prepare(
        &mut self,
        width: u32,
        height: u32,
        layers: &[StageLayer<'_>],
        pivot: usize,
    ) -> Result<bool, String> {
        match &mut self.backend {
            Backend::Wasm(live) => live.prepare(width, height, layers, pivot).map_err(|e| e.to_string()),
            Backend::Gl(gl, _) => gl.prepare(width, height, layers, pivot),
        }
    }

    /// Forgets the caches and what the canvas shows, so the next draw composites every layer.
    pub fn invalidate(&mut self) {
        match &mut self.backend {
            Backend::Wasm(live) => live.invalidate(),
            Backend::Gl(gl, _) => gl.invalidate(),
        }
    }

    /// The composite the next draw of `layers` would show, as straight-alpha RGBA8 (WASM: the
    /// last draw's pixels, so draw first; WebGL2: composited again and read back from the GPU).
    pub fn read_back(&mut self, width: u32, height: u32, layers: &[StageLayer<'_>]) -> Result<Vec<u8>, String> {
        match &mut self.backend {
            Backend::Wasm(live) => Ok(live.pixels().to_vec()),
            Backend::Gl(gl, _) => {
                let premultiplied = gl.read_back(width, height, layers)?;
                let mut out = vec![0u8; premultiplied.len()];
                crate::compose::kernel::finish(&premultiplied, &mut out);
                Ok(out)
            }
        }
    }

    /// The WebGL renderer's name, when this draws with WebGL2.
    pub fn gl_renderer(&self) -> Option<String> {
        match &self.backend {
            Backend::Gl(gl, _) => Some(gl.renderer()),
            Backend::Wasm(_) => None,
        }
    }

    /// A WebGL2 context that was lost (the stage then draws with WASM).
    pub fn is_lost(&self) -> bool {
        matches!(&self.backend, Backend::Gl(gl, _) if gl.is_lost())
    }
}

fn detached_canvas() -> Result<HtmlCanvasElement, String> {
    web_sys::window()
        .and_then(|w| w.document())
        .and_then(|d| d.create_element("canvas").ok())
        .and_then(|c| c.dyn_into().ok())
        .ok_or_else(|| "no canvas".to_string())
}

/// Whether this browser runs WebGL2 on a GPU (with float render targets), or why not.
fn gpu_webgl2() -> Result<(), String> {
    let gl = GlCompositor::new(&detached_canvas()?)?;
    let renderer = gl.renderer();
    gl.release();
    let software = ["SwiftShader", "llvmpipe", "softpipe", "Software", "Basic Render"];
    match software.iter().find(|s| renderer.contains(*s)) {
        Some(_) => Err(format!(
            "WebGL2 renders in software here ({renderer}), slower than WASM"
        )),
        None => Ok(()),
    }
}

fn wasm() -> Backend {
    Backend::Wasm(LiveCompositor::default())
}
