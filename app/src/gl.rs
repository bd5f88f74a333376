//! The WebGL2 compositor (browser only): the same plans as [`crate::compose::live`], on the GPU.
//!
//! - Layers are uploaded once per image into one `RGBA8UI` texture array (slices are reused as
//!   images come and go), so the shader reads the exact bytes the CPU path reads.
//! - One full-screen triangle per pass; the fragment shader loops over the pass's layers and
//!   does the CPU kernel's arithmetic in f32 (premultiplied accumulator, `a = αs·k`,
//!   `acc = (Cs·αs·k2, a) + acc·(1 − a)`), so both paths agree within 1/255 (the speed test
//!   checks it). No fixed-function blending: the accumulator never passes through 8 bits.
//! - The composites below and above the changed layer are `RGBA32F` render targets
//!   (`EXT_color_buffer_float`, required), so a toggle or an opacity drag is one pass reading three
//!   images.
//! - The canvas gets premultiplied pixels (`premultipliedAlpha: true`), as a 2D canvas stores
//!   them, so the page scales the canvas without fringes at soft edges.

use std::sync::Arc;

use wasm_bindgen::{JsCast, JsValue};
use web_sys::{
    HtmlCanvasElement, WebGl2RenderingContext as Gl, WebGlFramebuffer, WebGlProgram, WebGlShader, WebGlTexture,
    WebGlUniformLocation, WebGlVertexArrayObject,
};

use crate::compose::kernel::Scale;
use crate::compose::live::{Plan, Planner, StageLayer};

/// Layers one pass reads (the shader's uniform arrays); more are done in several passes.
const MAX_PER_PASS: usize = 16;

const VERTEX: &str = r#"#version 300 es
void main() {
    // One triangle that covers the viewport: (-1,-1), (3,-1), (-1,3).
    vec2 v = vec2(float((gl_VertexID & 1) << 2) - 1.0, float((gl_VertexID & 2) << 1) - 1.0);
    gl_Position = vec4(v, 0.0, 1.0);
}
"#;

const FRAGMENT: &str = r#"#version 300 es
precision highp float;
precision highp int;
precision highp usampler2DArray;
uniform usampler2DArray u_layers;
uniform highp sampler2D u_below;
uniform highp sampler2D u_above;
uniform int u_count;
uniform int u_slot[16];
uniform float u_k[16];
uniform float u_k2[16];
uniform bool u_use_below;
uniform bool u_use_above;
// 0 for a render target (image rows as they are), else the canvas height (rows flipped).
uniform int u_flip;
out vec4 o;
void main() {
    ivec2 p = ivec2(gl_FragCoord.xy);
    if (u_flip > 0) p.y = u_flip - 1 - p.y;
    vec4 acc = u_use_below ? texelFetch(u_below, p, 0) : vec4(0.0);
    for (int i = 0; i < u_count; i++) {
        vec4 c = vec4(texelFetch(u_layers, ivec3(p, u_slot[i]), 0));
        float m = c.a * u_k2[i];
        float a = c.a * u_k[i];
        acc = vec4(c.rgb * m, a) + acc * (1.0 - a);
    }
    if (u_use_above) {
        vec4 t = texelFetch(u_above, p, 0);
        acc = t + acc * (1.0 - t.a);
    }
    o = acc;
}
"#;

fn js_err(e: JsValue) -> String {
    e.as_string().unwrap_or_else(|| format!("{e:?}"))
}

/// An `RGBA32F` texture and the framebuffer that renders into it.
struct Target {
    texture: WebGlTexture,
    framebuffer: WebGlFramebuffer,
}

struct Uniforms {
    count: Option<WebGlUniformLocation>,
    slot: Option<WebGlUniformLocation>,
    k: Option<WebGlUniformLocation>,
    k2: Option<WebGlUniformLocation>,
    use_below: Option<WebGlUniformLocation>,
    use_above: Option<WebGlUniformLocation>,
    flip: Option<WebGlUniformLocation>,
}

/// Where a pass writes.
#[derive(Clone, Copy, PartialEq)]
enum Dest {
    Canvas,
    Below,
    Above,
    Scratch(usize),
}

pub struct GlCompositor {
    gl: Gl,
    program: WebGlProgram,
    uniforms: Uniforms,
    vao: WebGlVertexArrayObject,
    size: (u32, u32),
    /// The layer texture array and what each slice holds.
    array: Option<WebGlTexture>,
    slots: Vec<Option<Arc<[u8]>>>,
    below: Option<Target>,
    above: Option<Target>,
    /// Two for passes of more than [`MAX_PER_PASS`] layers, one for reading back.
    scratch: [Option<Target>; 3],
    planner: Planner,
}

impl GlCompositor {
    /// A WebGL2 context on `canvas` with float render targets, or why there is none. A canvas
    /// keeps the kind of context it first gave, so a failure here leaves it usable for 2D only
    /// if no context was created.
    pub fn new(canvas: &HtmlCanvasElement) -> Result<Self, String> {
        let options = js_sys::Object::new();
        for (key, value) in [
            ("alpha", true),
            ("premultipliedAlpha", true),
            ("preserveDrawingBuffer", true),
            ("antialias", false),
            ("depth", false),
            ("stencil", false),
        ] {
            js_sys::Reflect::set(&options, &key.into(), &value.into()).map_err(js_err)?;
        }
        let gl: Gl = canvas
            .get_context_with_context_options("webgl2", &options)
            .map_err(js_err)?
            .ok_or("WebGL2 is not available")?
            .dyn_into()
            .map_err(|_| "not a WebGL2 context".to_string())?;
        if gl.get_extension("EXT_color_buffer_float").map_err(js_err)?.is_none() {
            return Err("WebGL2 without float render targets (EXT_color_buffer_float)".into());
        }
        let program = link(&gl)?;
        let at = |name: &str| gl.get_uniform_location(&program, name);
        let uniforms = Uniforms {
            count: at("u_count"),
            slot: at("u_slot"),
            k: at("u_k"),
            k2: at("u_k2"),
            use_below: at("u_use_below"),
            use_above: at("u_use_above"),
            flip: at("u_flip"),
        };
        gl.use_program(Some(&program));
        gl.uniform1i(at("u_layers").as_ref(), 0);
        gl.uniform1i(at("u_below").as_ref(), 1);
        gl.uniform1i(at("u_above").as_ref(), 2);
        let vao = gl.create_vertex_array().ok_or("no vertex array")?;
        gl.disable(Gl::BLEND);
        gl.disable(Gl::DITHER);
        Ok(Self {
            gl,
            program,
            uniforms,
            vao,
            size: (0, 0),
            array: None,
            slots: Vec::new(),
            below: None,
            above: None,
            scratch: [None, None, None],
            planner: Planner::default(),
        })
    }

    /// The renderer's name (e.g. "ANGLE (… SwiftShader …)"), for the speed test's report.
    pub fn renderer(&self) -> String {
        let param = match self.gl.get_extension("WEBGL_debug_renderer_info") {
            Ok(Some(_)) => 0x9246, // UNMASKED_RENDERER_WEBGL
            _ => Gl::RENDERER,
        };
        self.gl
            .get_parameter(param)
            .ok()
            .and_then(|v| v.as_string())
            .unwrap_or_default()
    }

    /// Gives the context back to the browser now (it allows only a few at once).
    pub fn release(&self) {
        if let Ok(Some(ext)) = self.gl.get_extension("WEBGL_lose_context") {
            let lose = js_sys::Reflect::get(&ext, &"loseContext".into())
                .ok()
                .and_then(|f| f.dyn_into::<js_sys::Function>().ok());
            if let Some(lose) = lose {
                let _ = lose.call0(&ext);
            }
        }
    }

    pub fn is_lost(&self) -> bool {
        self.gl.is_context_lost()
    }

    /// Draws `layers` (bottom first, hidden ones included) on the canvas. `finish` waits until
    /// the GPU is done (for timing): Chrome's `finish()` returns at once, so one pixel is read
    /// back, which waits for everything drawn before it.
    /// Nothing is drawn for [`Plan::Keep`]: the canvas keeps the last draw's pixels.
    pub fn draw(&mut self, width: u32, height: u32, layers: &[StageLayer<'_>], finish: bool) -> Result<Plan, String> {
        self.resize(width, height)?;
        let plan = self.planner.plan(width, height, layers);
        self.run(plan, layers, Some(Dest::Canvas))?;
        self.planner.done(width, height, layers, plan, true);
        if finish && plan != Plan::Keep {
            let mut px = [0u8; 4];
            self.gl
                .read_pixels_with_opt_u8_array(0, 0, 1, 1, Gl::RGBA, Gl::UNSIGNED_BYTE, Some(&mut px))
                .map_err(js_err)?;
        }
        Ok(plan)
    }

    /// Makes the caches ready for changes to layer `pivot` (see `LiveCompositor::prepare`).
    pub fn prepare(
        &mut self,
        width: u32,
        height: u32,
        layers: &[StageLayer<'_>],
        pivot: usize,
    ) -> Result<bool, String> {
        self.resize(width, height)?;
        let Some(plan) = self.planner.prepare(width, height, layers, pivot) else {
            return Ok(false);
        };
        self.run(plan, layers, None)?;
        self.planner.done(width, height, layers, plan, false);
        Ok(true)
    }

    /// Forgets what the canvas and the caches hold, so the next draw composites every layer.
    pub fn invalidate(&mut self) {
        self.planner.reset();
    }

    /// Draws one straight-alpha image as it is (the model's composite).
    pub fn draw_image(&mut self, width: u32, height: u32, rgba: &Arc<[u8]>) -> Result<(), String> {
        self.resize(width, height)?;
        let layer = [StageLayer {
            pixels: rgba,
            visible: true,
            opacity: 1.0,
        }];
        self.planner.forget_drawn();
        self.run(Plan::Full, &layer, Some(Dest::Canvas))
    }

    /// Composites `layers` as the next draw would (from the caches where they serve) into a
    /// float target and reads it back: premultiplied RGBA in [0, 1], rows top first, for
    /// comparing with the CPU path. The canvas is left as it is.
    pub fn read_back(&mut self, width: u32, height: u32, layers: &[StageLayer<'_>]) -> Result<Vec<f32>, String> {
        self.resize(width, height)?;
        let plan = self.planner.redraw(width, height, layers);
        self.run(plan, layers, Some(Dest::Scratch(2)))?;
        self.planner.done(width, height, layers, plan, false);
        let n = width as usize * height as usize * 4;
        let buffer = js_sys::Float32Array::new_with_length(n as u32);
        let framebuffer = self.target(Dest::Scratch(2))?.framebuffer.clone();
        self.gl.bind_framebuffer(Gl::FRAMEBUFFER, Some(&framebuffer));
        let read = self.gl.read_pixels_with_opt_array_buffer_view(
            0,
            0,
            width as i32,
            height as i32,
            Gl::RGBA,
            Gl::FLOAT,
            Some(&buffer),
        );
        self.gl.bind_framebuffer(Gl::FRAMEBUFFER, None);
        read.map_err(js_err)?;
        Ok(buffer.to_vec())
    }

    /// A new image size drops the targets and the texture array (they are made again as needed).
    fn resize(&mut self, width: u32, height: u32) -> Result<(), String> {
        if self.is_lost() {
            return Err("the WebGL context was lost".into());
        }
        if self.size == (width, height) {
            return Ok(());
        }
        let canvas = self
            .gl
            .canvas()
            .and_then(|c| c.dyn_into::<HtmlCanvasElement>().ok())
            .ok_or("no canvas")?;
        canvas.set_width(width);
        canvas.set_height(height);
        for t in [
            self.below.take(),
            self.above.take(),
            self.scratch[0].take(),
            self.scratch[1].take(),
            self.scratch[2].take(),
        ]
        .into_iter()
        .flatten()
        {
            self.gl.delete_framebuffer(Some(&t.framebuffer));
            self.gl.delete_texture(Some(&t.texture));
        }
        if let Some(a) = self.array.take() {
            self.gl.delete_texture(Some(&a));
        }
        self.slots.clear();
        self.planner.reset();
        self.size = (width, height);
        Ok(())
    }

    /// Carries out `plan`; the final image goes to `dest` (`None`: only the caches are made).
    fn run(&mut self, plan: Plan, layers: &[StageLayer<'_>], dest: Option<Dest>) -> Result<(), String> {
        let slots = self.upload(layers)?;
        let pass = |range: std::ops::Range<usize>| -> Vec<(i32, Scale)> {
            range
                .filter_map(|i| Some((slots[i], Scale::new(layers[i].effective()?)?)))
                .collect()
        };
        match plan {
            Plan::Keep => Ok(()),
            Plan::Full => match dest {
                Some(dest) => self.composite(&pass(0..layers.len()), false, false, dest),
                None => Ok(()),
            },
            Plan::Split { pivot } | Plan::Blend { pivot } => {
                if let Plan::Split { .. } = plan {
                    self.composite(&pass(0..pivot), false, false, Dest::Below)?;
                    self.composite(&pass(pivot + 1..layers.len()), false, false, Dest::Above)?;
                }
                match dest {
                    Some(dest) => self.composite(&pass(pivot..pivot + 1), true, true, dest),
                    None => Ok(()),
                }
            }
        }
    }

    /// Composites `layers` (slice, scale) over the below target (or transparency), then puts the
    /// above target over the result, into `dest`; in several passes when there are many layers.
    fn composite(
        &mut self,
        layers: &[(i32, Scale)],
        use_below: bool,
        use_above: bool,
        dest: Dest,
    ) -> Result<(), String> {
        let chunks: Vec<&[(i32, Scale)]> = if layers.is_empty() {
            vec![&[]]
        } else {
            layers.chunks(MAX_PER_PASS).collect()
        };
        let last = chunks.len() - 1;
        let mut input = use_below.then_some(Dest::Below);
        for (i, chunk) in chunks.into_iter().enumerate() {
            let out = if i == last { dest } else { Dest::Scratch(i % 2) };
            self.pass(chunk, input, use_above && i == last, out)?;
            input = Some(out);
        }
        Ok(())
    }

    fn pass(&mut self, layers: &[(i32, Scale)], below: Option<Dest>, above: bool, dest: Dest) -> Result<(), String> {
        let (w, h) = self.size;
        let below_tex = match below {
            Some(d) => Some(self.target(d)?.texture.clone()),
            None => None,
        };
        let above_tex = if above {
            Some(self.target(Dest::Above)?.texture.clone())
        } else {
            None
        };
        let framebuffer = match dest {
            Dest::Canvas => None,
            d => Some(self.target(d)?.framebuffer.clone()),
        };
        let gl = &self.gl;
        gl.bind_framebuffer(Gl::FRAMEBUFFER, framebuffer.as_ref());
        gl.viewport(0, 0, w as i32, h as i32);
        gl.use_program(Some(&self.program));
        gl.bind_vertex_array(Some(&self.vao));
        gl.active_texture(Gl::TEXTURE0);
        gl.bind_texture(Gl::TEXTURE_2D_ARRAY, self.array.as_ref());
        gl.active_texture(Gl::TEXTURE1);
        gl.bind_texture(Gl::TEXTURE_2D, below_tex.as_ref());
        gl.active_texture(Gl::TEXTURE2);
        gl.bind_texture(Gl::TEXTURE_2D, above_tex.as_ref());
        let mut slot = [0i32; MAX_PER_PASS];
        let mut k = [0f32; MAX_PER_PASS];
        let mut k2 = [0f32; MAX_PER_PASS];
        for (i, (s, scale)) in layers.iter().enumerate() {
            slot[i] = *s;
            k[i] = scale.k;
            k2[i] = scale.k2;
        }
        let u = &self.uniforms;
        gl.uniform1i(u.count.as_ref(), layers.len() as i32);
        gl.uniform1iv_with_i32_array(u.slot.as_ref(), &slot);
        gl.uniform1fv_with_f32_array(u.k.as_ref(), &k);
        gl.uniform1fv_with_f32_array(u.k2.as_ref(), &k2);
        gl.uniform1i(u.use_below.as_ref(), i32::from(below.is_some()));
        gl.uniform1i(u.use_above.as_ref(), i32::from(above));
        gl.uniform1i(u.flip.as_ref(), if dest == Dest::Canvas { h as i32 } else { 0 });
        gl.draw_arrays(Gl::TRIANGLES, 0, 3);
        gl.bind_framebuffer(Gl::FRAMEBUFFER, None);
        Ok(())
    }

    /// The render target behind `dest`, made on first use.
    fn target(&mut self, dest: Dest) -> Result<&Target, String> {
        let (w, h) = self.size;
        let gl = self.gl.clone();
        let slot = match dest {
            Dest::Below => &mut self.below,
            Dest::Above => &mut self.above,
            Dest::Scratch(i) => &mut self.scratch[i],
            Dest::Canvas => return Err("the canvas is not a texture".into()),
        };
        if slot.is_none() {
            let texture = gl.create_texture().ok_or("no texture")?;
            gl.bind_texture(Gl::TEXTURE_2D, Some(&texture));
            gl.tex_storage_2d(Gl::TEXTURE_2D, 1, Gl::RGBA32F, w as i32, h as i32);
            nearest(&gl, Gl::TEXTURE_2D);
            let framebuffer = gl.create_framebuffer().ok_or("no framebuffer")?;
            gl.bind_framebuffer(Gl::FRAMEBUFFER, Some(&framebuffer));
            gl.framebuffer_texture_2d(
                Gl::FRAMEBUFFER,
                Gl::COLOR_ATTACHMENT0,
                Gl::TEXTURE_2D,
                Some(&texture),
                0,
            );
            let status = gl.check_framebuffer_status(Gl::FRAMEBUFFER);
            gl.bind_framebuffer(Gl::FRAMEBUFFER, None);
            if status != Gl::FRAMEBUFFER_COMPLETE {
                return Err(format!("float render target incomplete (0x{status:x})"));
            }
            *slot = Some(Target { texture, framebuffer });
        }
        Ok(slot.as_ref().expect("made above"))
    }

    /// Uploads every effective layer's pixels not in a slice yet; returns each layer's slice
    /// (-1 for layers that are not drawn).
    fn upload(&mut self, layers: &[StageLayer<'_>]) -> Result<Vec<i32>, String> {
        let (w, h) = self.size;
        // Slices whose images left the stack are free again.
        for s in &mut self.slots {
            if s.as_ref()
                .is_some_and(|p| !layers.iter().any(|l| Arc::ptr_eq(p, l.pixels)))
            {
                *s = None;
            }
        }
        let needed = layers.len().max(1);
        if self.array.is_none() || self.slots.len() < needed {
            // A new array (first draw, or a stack grown past it): everything is uploaded again.
            if let Some(a) = self.array.take() {
                self.gl.delete_texture(Some(&a));
            }
            let depth = needed.next_power_of_two().max(4);
            let texture = self.gl.create_texture().ok_or("no texture")?;
            self.gl.bind_texture(Gl::TEXTURE_2D_ARRAY, Some(&texture));
            self.gl
                .tex_storage_3d(Gl::TEXTURE_2D_ARRAY, 1, Gl::RGBA8UI, w as i32, h as i32, depth as i32);
            nearest(&self.gl, Gl::TEXTURE_2D_ARRAY);
            self.array = Some(texture);
            self.slots = vec![None; depth];
        }
        self.gl.bind_texture(Gl::TEXTURE_2D_ARRAY, self.array.as_ref());
        self.gl.pixel_storei(Gl::UNPACK_ALIGNMENT, 1);
        let mut out = Vec::with_capacity(layers.len());
        for l in layers {
            if l.effective().is_none() {
                out.push(-1);
                continue;
            }
            if let Some(i) = self
                .slots
                .iter()
                .position(|s| s.as_ref().is_some_and(|p| Arc::ptr_eq(p, l.pixels)))
            {
                out.push(i as i32);
                continue;
            }
            let i = self
                .slots
                .iter()
                .position(Option::is_none)
                .ok_or("no free texture slice")?;
            self.gl
                .tex_sub_image_3d_with_opt_u8_array(
                    Gl::TEXTURE_2D_ARRAY,
                    0,
                    0,
                    0,
                    i as i32,
                    w as i32,
                    h as i32,
                    1,
                    Gl::RGBA_INTEGER,
                    Gl::UNSIGNED_BYTE,
                    Some(&l.pixels[..]),
                )
                .map_err(js_err)?;
            self.slots[i] = Some(Arc::clone(l.pixels));
            out.push(i as i32);
        }
        Ok(out)
    }
}

fn nearest(gl: &Gl, target: u32) {
    gl.tex_parameteri(target, Gl::TEXTURE_MIN_FILTER, Gl::NEAREST as i32);
    gl.tex_parameteri(target, Gl::TEXTURE_MAG_FILTER, Gl::NEAREST as i32);
    gl.tex_parameteri(target, Gl::TEXTURE_WRAP_S, Gl::CLAMP_TO_EDGE as i32);
    gl.tex_parameteri(target, Gl::TEXTURE_WRAP_T, Gl::CLAMP_TO_EDGE as i32);
}

fn compile(gl: &Gl, kind: u32, source: &str) -> Result<WebGlShader, String> {
    let shader = gl.create_shader(kind).ok_or("no shader")?;
    gl.shader_source(&shader, source);
    gl.compile_shader(&shader);
    if gl.get_shader_parameter(&shader, Gl::COMPILE_STATUS).as_bool() == Some(true) {
        Ok(shader)
    } else {
        Err(format!(
            "shader: {}",
            gl.get_shader_info_log(&shader).unwrap_or_default()
        ))
    }
}

fn link(gl: &Gl) -> Result<WebGlProgram, String> {
    let program = gl.create_program().ok_or("no program")?;
    gl.attach_shader(&program, &compile(gl, Gl::VERTEX_SHADER, VERTEX)?);
    gl.attach_shader(&program, &compile(gl, Gl::FRAGMENT_SHADER, FRAGMENT)?);
    gl.link_program(&program);
    if gl.get_program_parameter(&program, Gl::LINK_STATUS).as_bool() == Some(true) {
        Ok(program)
    } else {
        Err(format!(
            "program: {}",
            gl.get_program_info_log(&program).unwrap_or_default()
        ))
    }
}
