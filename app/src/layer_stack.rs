//! The layer stack the web app works on: the decomposed layers (bottom first), their visibility,
//! opacity and order, every edit of each layer (so an edit can be compared and undone), and an
//! undo/redo history of the whole arrangement. A layer split into sub-layers (decomposed again)
//! becomes a group of them that shows, hides and moves as one and can be turned back into the
//! layer. Pure data: no browser types, so it is tested natively and the UI only renders it.
//!
//! Pixels are shared (`Arc`), so snapshots for undo cost a few pointers per layer.

use std::sync::Arc;

use crate::api::DecomposeResponse;
use crate::compose::live::StageLayer;
use crate::compose::LayerPixels;

/// One decoded image: straight-alpha RGBA8 pixels for compositing and the PNG data URL they came
/// from (for thumbnails and export, without re-encoding).
#[derive(Clone)]
pub struct Bitmap {
    pub width: u32,
    pub height: u32,
    pub rgba: Arc<[u8]>,
    pub data_url: Arc<str>,
}

impl std::fmt::Debug for Bitmap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Bitmap({}×{}, {} bytes)", self.width, self.height, self.rgba.len())
    }
}

/// Two bitmaps are equal when they are the same decoded image (comparing megabytes of pixels
/// on every signal update would be wasteful, and a bitmap is never mutated in place).
impl PartialEq for Bitmap {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.rgba, &other.rgba) && Arc::ptr_eq(&self.data_url, &other.data_url)
    }
}

impl Bitmap {
    /// Decodes a PNG data URL (or bare base64) into RGBA8.
    pub fn from_data_url(data_url: &str) -> Result<Self, String> {
        let img = crate::image_data::decode_image(data_url, u64::MAX).map_err(|e| e.error)?;
        let (width, height) = img.dimensions();
        let data_url: Arc<str> = if data_url.starts_with("data:") {
            data_url.into()
        } else {
            format!("data:image/png;base64,{data_url}").into()
        };
        Ok(Self {
            width,
            height,
            rgba: img.into_raw().into(),
            data_url,
        })
    }

    /// Wraps pixels that are already decoded (tests, generated images).
    pub fn from_rgba(width: u32, height: u32, rgba: Vec<u8>, data_url: impl Into<Arc<str>>) -> Self {
        Self {
            width,
            height,
            rgba: rgba.into(),
            data_url: data_url.into(),
        }
    }

    /// The PNG file behind the data URL.
    /// This image at `width × height` (Lanczos), or itself when it already is that size.
    pub fn resized(&self, width: u32, height: u32) -> Result<Self, String> {
        if (self.width, self.height) == (width, height) {
            return Ok(self.clone());
        }
        let img = image::RgbaImage::from_raw(self.width, self.height, self.rgba.to_vec())
            .ok_or_else(|| "the image's pixels do not match its size".to_string())?;
        let out = image::imageops::resize(&img, width, height, image::imageops::FilterType::Lanczos3);
        let png = crate::image_data::encode_png(&out).map_err(|e| e.error)?;
        Ok(Self::from_rgba(
            width,
            height,
            out.into_raw(),
            crate::image_data::png_data_url(&png),
        ))
    }

    pub fn png_bytes(&self) -> Result<Vec<u8>, String> {
        crate::image_data::decode_base64_payload(&self.data_url).map_err(|e| e.error)
    }
}

/// One version of a layer's pixels: the decomposed original or the result of an edit.
#[derive(Debug, Clone, PartialEq)]
pub struct Version {
    pub bitmap: Bitmap,
    /// The edit instruction that produced it (`None` for the decomposed original).
    pub instruction: Option<String>,
}

/// A layer as the user sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct Layer {
    /// Stable identity across reorders and edits (the UI keys rows by it).
    pub id: u32,
    pub name: String,
    pub visible: bool,
    /// Opacity multiplier in [0, 1].
    pub opacity: f32,
    /// Oldest first; the last is the current pixels. Never empty.
    pub versions: Vec<Version>,
    /// The before/after toggle: show the version before the last edit instead of the current.
    pub show_before: bool,
    /// The group (a split layer) it belongs to.
    pub group: Option<u32>,
}

/// A layer split into sub-layers: the sub-layers are the stack's layers with `group` set to
/// this id, kept together; the group's visibility and opacity apply to all of them.
#[derive(Debug, Clone, PartialEq)]
pub struct LayerGroup {
    /// From the same series as layer ids (the panel keys rows by them).
    pub id: u32,
    pub name: String,
    pub visible: bool,
    /// Opacity multiplier in [0, 1] for every layer in the group.
    pub opacity: f32,
    /// The layer it replaced, restored by [`LayerStack::unsplit`].
    pub original: Layer,
}

/// A row of the layer panel, top of the stack first: a group's row comes above its layers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Row {
    Layer(u32),
    Group(u32),
}

impl Layer {
    pub fn current(&self) -> &Version {
        self.versions.last().expect("a layer always has a version")
    }

    pub fn is_edited(&self) -> bool {
        self.versions.len() > 1
    }

    /// What the canvas and thumbnail show: the current pixels, or the previous ones while the
    /// before/after toggle is on "before".
    pub fn shown(&self) -> &Bitmap {
        if self.show_before && self.is_edited() {
            &self.versions[self.versions.len() - 2].bitmap
        } else {
            &self.current().bitmap
        }
    }

    /// Edit instructions applied so far, oldest first.
    pub fn instructions(&self) -> Vec<&str> {
        self.versions.iter().filter_map(|v| v.instruction.as_deref()).collect()
    }
}

/// Why a stack operation was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StackError {
    #[error("no layer with id {0}")]
    NoSuchLayer(u32),
    #[error("the stack has no layers")]
    Empty,
    #[error("{name} is {got}, but the stack is {width}×{height}")]
    SizeMismatch {
        name: String,
        got: String,
        width: u32,
        height: u32,
    },
    #[error("the response has no composite (index 0)")]
    NoComposite,
    #[error("{name} could not be decoded: {reason}")]
    Decode { name: String, reason: String },
    #[error("no group with id {0}")]
    NoSuchGroup(u32),
    #[error("{0} is already part of a split layer: undo that split to split the layer again")]
    Nested(String),
    #[error("a split needs at least one part")]
    NoParts,
}

/// Which operation last changed the stack: consecutive opacity changes of one layer (a slider
/// drag) make a single undo step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum LastOp {
    Opacity(u32),
    Other,
}

/// Most undo steps kept.
pub const MAX_HISTORY: usize = 100;

/// What undo restores: the layers and the groups over them.
#[derive(Debug, Clone, PartialEq)]
struct Arrangement {
    layers: Vec<Layer>,
    groups: Vec<LayerGroup>,
}

/// The layers, bottom first, with undo/redo.
#[derive(Debug, Clone, PartialEq)]
pub struct LayerStack {
    width: u32,
    height: u32,
    layers: Vec<Layer>,
    /// Split layers; each group's layers are next to each other in `layers`.
    groups: Vec<LayerGroup>,
    /// Groups shown folded in the panel (a view setting, not an undo step).
    collapsed: Vec<u32>,
    /// The next id for a layer or group.
    next_id: u32,
    undo: Vec<Arrangement>,
    redo: Vec<Arrangement>,
    last_op: Option<LastOp>,
}

impl LayerStack {
    /// Builds a stack from named bitmaps, bottom first. All must have the same size.
    pub fn new(layers: Vec<(String, Bitmap)>) -> Result<Self, StackError> {
        let (width, height) = match layers.first() {
            Some((_, b)) => (b.width, b.height),
            None => return Err(StackError::Empty),
        };
        let mut out = Vec::with_capacity(layers.len());
        for (i, (name, bitmap)) in layers.into_iter().enumerate() {
            check_size(&name, &bitmap, width, height)?;
            out.push(Layer {
                id: i as u32 + 1,
                name,
                visible: true,
                opacity: 1.0,
                versions: vec![Version {
                    bitmap,
                    instruction: None,
                }],
                show_before: false,
                group: None,
            });
        }
        let next_id = out.len() as u32 + 1;
        Ok(Self {
            width,
            height,
            layers: out,
            groups: Vec::new(),
            collapsed: Vec::new(),
            next_id,
            undo: Vec::new(),
            redo: Vec::new(),
            last_op: None,
        })
    }

    pub fn width(&self) -> u32 {
        self.width
    }

    pub fn height(&self) -> u32 {
        self.height
    }

    /// Bottom first (drawing order).
    pub fn layers(&self) -> &[Layer] {
        &self.layers
    }

    pub fn len(&self) -> usize {
        self.layers.len()
    }

    pub fn is_empty(&self) -> bool {
        self.layers.is_empty()
    }

    /// Ids from the top of the stack down (the order a layer panel lists them).
    pub fn ids_top_down(&self) -> Vec<u32> {
        self.layers.iter().rev().map(|l| l.id).collect()
    }

    pub fn get(&self, id: u32) -> Option<&Layer> {
        self.layers.iter().find(|l| l.id == id)
    }

    fn index(&self, id: u32) -> Result<usize, StackError> {
        self.layers
            .iter()
            .position(|l| l.id == id)
            .ok_or(StackError::NoSuchLayer(id))
    }

    /// Position in the stack, 1 = bottom.
    pub fn position(&self, id: u32) -> Option<usize> {
        self.index(id).ok().map(|i| i + 1)
    }

    fn arrangement(&self) -> Arrangement {
        Arrangement {
            layers: self.layers.clone(),
            groups: self.groups.clone(),
        }
    }

    fn restore(&mut self, to: Arrangement) -> Arrangement {
        Arrangement {
            layers: std::mem::replace(&mut self.layers, to.layers),
            groups: std::mem::replace(&mut self.groups, to.groups),
        }
    }

    /// Saves the arrangement before a change (for undo) and forgets the redo branch.
    fn record(&mut self, op: LastOp) {
        let before = self.arrangement();
        self.record_from(before, op);
    }

    /// [`Self::record`] with the arrangement as it was before a change already made.
    fn record_from(&mut self, before: Arrangement, op: LastOp) {
        let coalesce = matches!(op, LastOp::Opacity(_)) && self.last_op == Some(op);
        if !coalesce {
            self.undo.push(before);
            if self.undo.len() > MAX_HISTORY {
                self.undo.remove(0);
            }
        }
        self.redo.clear();
        self.last_op = Some(op);
    }

    /// The layers of group `g`, as a range of the stack.
    fn group_range(&self, g: u32) -> Option<std::ops::Range<usize>> {
        let first = self.layers.iter().position(|l| l.group == Some(g))?;
        let last = self.layers.iter().rposition(|l| l.group == Some(g))?;
        Some(first..last + 1)
    }

    /// What moves as one at stack position `i`: inside group `within`, its layer there; at the
    /// top level, a layer or a whole group.
    fn block_at(&self, i: usize, within: Option<u32>) -> Option<std::ops::Range<usize>> {
        let l = self.layers.get(i)?;
        match (within, l.group) {
            (Some(g), Some(h)) if g == h => Some(i..i + 1),
            (Some(_), _) => None,
            (None, Some(h)) => self.group_range(h),
            (None, None) => Some(i..i + 1),
        }
    }

    /// Swaps `range` with the block above (or below) it; no undo record. Whether it moved.
    fn step(&mut self, range: std::ops::Range<usize>, within: Option<u32>, up: bool) -> bool {
        if up {
            let Some(above) = self.block_at(range.end, within) else {
                return false;
            };
            self.layers[range.start..above.end].rotate_left(range.len());
        } else {
            let Some(below) = range.start.checked_sub(1).and_then(|i| self.block_at(i, within)) else {
                return false;
            };
            self.layers[below.start..range.end].rotate_right(range.len());
        }
        true
    }

    /// Moves a layer towards `to` (0 = bottom) as far as it goes: a layer of a group stays in
    /// its group, any other layer passes a group whole. Returns whether anything moved.
    pub fn move_to(&mut self, id: u32, to: usize) -> Result<bool, StackError> {
        let mut at = self.index(id)?;
        let within = self.layers[at].group;
        let to = to.min(self.layers.len() - 1);
        let before = self.arrangement();
        let mut moved = false;
        while at != to {
            let up = at < to;
            if !self.step(at..at + 1, within, up) {
                break;
            }
            moved = true;
            at = self.index(id)?;
            if (up && at > to) || (!up && at < to) {
                break;
            }
        }
        if moved {
            self.record_from(before, LastOp::Other);
        }
        Ok(moved)
    }

    /// Moves a layer one step towards the top. Returns whether it moved (not already on top
    /// of the stack, or of its group).
    pub fn move_up(&mut self, id: u32) -> Result<bool, StackError> {
        self.move_by(id, true)
    }

    /// Moves a layer one step towards the bottom. Returns whether it moved.
    pub fn move_down(&mut self, id: u32) -> Result<bool, StackError> {
        self.move_by(id, false)
    }

    fn move_by(&mut self, id: u32, up: bool) -> Result<bool, StackError> {
        let i = self.index(id)?;
        let within = self.layers[i].group;
        let before = self.arrangement();
        let moved = self.step(i..i + 1, within, up);
        if moved {
            self.record_from(before, LastOp::Other);
        }
        Ok(moved)
    }

    /// Whether the layer can move up (`true`) or down within its group or the stack.
    pub fn can_move(&self, id: u32, up: bool) -> bool {
        self.index(id).is_ok_and(|i| {
            let within = self.layers[i].group;
            if up {
                self.block_at(i + 1, within).is_some()
            } else {
                i.checked_sub(1).and_then(|j| self.block_at(j, within)).is_some()
            }
        })
    }

    /// Puts the layer `id` where `target` is now (drag and drop onto a row), shifting the rest.
    pub fn move_onto(&mut self, id: u32, target: u32) -> Result<bool, StackError> {
        let to = self.index(target)?;
        self.move_to(id, to)
    }

    /// Moves a whole group one step up (or down) past the layer or group next to it.
    pub fn move_group(&mut self, group: u32, up: bool) -> Result<bool, StackError> {
        let range = self.group_range(group).ok_or(StackError::NoSuchGroup(group))?;
        let before = self.arrangement();
        let moved = self.step(range, None, up);
        if moved {
            self.record_from(before, LastOp::Other);
        }
        Ok(moved)
    }

    /// Whether the group can move up (`true`) or down.
    pub fn can_move_group(&self, group: u32, up: bool) -> bool {
        self.group_range(group).is_some_and(|r| {
            if up {
                self.block_at(r.end, None).is_some()
            } else {
                r.start.checked_sub(1).and_then(|j| self.block_at(j, None)).is_some()
            }
        })
    }

    pub fn set_visible(&mut self, id: u32, visible: bool) -> Result<(), StackError> {
        let i = self.index(id)?;
        if self.layers[i].visible != visible {
            self.record(LastOp::Other);
            self.layers[i].visible = visible;
        }
        Ok(())
    }

    /// Flips visibility; returns the new state.
    pub fn toggle_visible(&mut self, id: u32) -> Result<bool, StackError> {
        let now = !self.get(id).ok_or(StackError::NoSuchLayer(id))?.visible;
        self.set_visible(id, now)?;
        Ok(now)
    }

    /// Sets the opacity (clamped to [0, 1]); a run of changes to one layer is one undo step.
    pub fn set_opacity(&mut self, id: u32, opacity: f32) -> Result<(), StackError> {
        let i = self.index(id)?;
        let opacity = if opacity.is_finite() {
            opacity.clamp(0.0, 1.0)
        } else {
            1.0
        };
        if self.layers[i].opacity != opacity {
            self.record(LastOp::Opacity(id));
            self.layers[i].opacity = opacity;
        }
        Ok(())
    }

    /// Ends a run of opacity changes, so the next one starts a new undo step.
    pub fn end_gesture(&mut self) {
        self.last_op = None;
    }

    /// Replaces a layer's pixels with an edit's result; the old pixels stay for before/after
    /// and undo.
    pub fn apply_edit(&mut self, id: u32, bitmap: Bitmap, instruction: impl Into<String>) -> Result<(), StackError> {
        let i = self.index(id)?;
        check_size(&self.layers[i].name, &bitmap, self.width, self.height)?;
        self.record(LastOp::Other);
        let layer = &mut self.layers[i];
        layer.versions.push(Version {
            bitmap,
            instruction: Some(instruction.into()),
        });
        layer.show_before = false;
        Ok(())
    }

    /// Drops the layer's last edit. Returns whether there was one.
    pub fn undo_edit(&mut self, id: u32) -> Result<bool, StackError> {
        let i = self.index(id)?;
        if !self.layers[i].is_edited() {
            return Ok(false);
        }
        self.record(LastOp::Other);
        let layer = &mut self.layers[i];
        layer.versions.pop();
        layer.show_before = false;
        Ok(true)
    }

    /// The before/after toggle (a view setting: not an undo step). Returns the new state;
    /// always `false` for a layer without edits.
    pub fn toggle_before(&mut self, id: u32) -> Result<bool, StackError> {
        let i = self.index(id)?;
        let layer = &mut self.layers[i];
        layer.show_before = layer.is_edited() && !layer.show_before;
        Ok(layer.show_before)
    }

    pub fn groups(&self) -> &[LayerGroup] {
        &self.groups
    }

    pub fn group(&self, id: u32) -> Option<&LayerGroup> {
        self.groups.iter().find(|g| g.id == id)
    }

    /// The group's layer ids, top first.
    pub fn group_members_top_down(&self, id: u32) -> Vec<u32> {
        self.layers
            .iter()
            .rev()
            .filter(|l| l.group == Some(id))
            .map(|l| l.id)
            .collect()
    }

    /// The panel's rows, top of the stack first: each group's row above its layers, which are
    /// left out while the group is collapsed.
    pub fn rows_top_down(&self) -> Vec<Row> {
        let mut rows = Vec::with_capacity(self.layers.len() + self.groups.len());
        let mut open: Option<u32> = None;
        for l in self.layers.iter().rev() {
            if let Some(g) = l.group {
                if open != Some(g) {
                    rows.push(Row::Group(g));
                    open = Some(g);
                }
                if !self.is_collapsed(g) {
                    rows.push(Row::Layer(l.id));
                }
            } else {
                open = None;
                rows.push(Row::Layer(l.id));
            }
        }
        rows
    }

    /// Replaces layer `id` by a group of `parts` (bottom first, each the stack's size) named
    /// after it, with its visibility and opacity; the layer is kept to restore with
    /// [`Self::unsplit`] (or undo). Returns the group's id.
    pub fn split(&mut self, id: u32, parts: Vec<(String, Bitmap)>) -> Result<u32, StackError> {
        let i = self.index(id)?;
        let original = self.layers[i].clone();
        if original.group.is_some() {
            return Err(StackError::Nested(original.name));
        }
        if parts.is_empty() {
            return Err(StackError::NoParts);
        }
        for (name, bitmap) in &parts {
            check_size(name, bitmap, self.width, self.height)?;
        }
        self.record(LastOp::Other);
        let group = self.next_id;
        self.next_id += 1;
        let layers: Vec<Layer> = parts
            .into_iter()
            .map(|(name, bitmap)| {
                let id = self.next_id;
                self.next_id += 1;
                Layer {
                    id,
                    name,
                    visible: true,
                    opacity: 1.0,
                    versions: vec![Version {
                        bitmap,
                        instruction: None,
                    }],
                    show_before: false,
                    group: Some(group),
                }
            })
            .collect();
        self.layers.splice(i..i + 1, layers);
        self.groups.push(LayerGroup {
            id: group,
            name: original.name.clone(),
            visible: original.visible,
            opacity: original.opacity,
            original,
        });
        Ok(group)
    }

    /// Turns a group back into the layer it was split from (its sub-layers and their edits go;
    /// undo brings them back). Returns the restored layer's id.
    pub fn unsplit(&mut self, group: u32) -> Result<u32, StackError> {
        let range = self.group_range(group).ok_or(StackError::NoSuchGroup(group))?;
        let at = self
            .groups
            .iter()
            .position(|g| g.id == group)
            .ok_or(StackError::NoSuchGroup(group))?;
        self.record(LastOp::Other);
        let g = self.groups.remove(at);
        let id = g.original.id;
        self.layers.splice(range, [g.original]);
        self.collapsed.retain(|&c| c != group);
        Ok(id)
    }

    /// Shows or hides a whole group (one undo step).
    pub fn set_group_visible(&mut self, group: u32, visible: bool) -> Result<(), StackError> {
        let i = self
            .groups
            .iter()
            .position(|g| g.id == group)
            .ok_or(StackError::NoSuchGroup(group))?;
        if self.groups[i].visible != visible {
            self.record(LastOp::Other);
            self.groups[i].visible = visible;
        }
        Ok(())
    }

    /// Flips a group's visibility; returns the new state.
    pub fn toggle_group_visible(&mut self, group: u32) -> Result<bool, StackError> {
        let now = !self.group(group).ok_or(StackError::NoSuchGroup(group))?.visible;
        self.set_group_visible(group, now)?;
        Ok(now)
    }

    pub fn is_collapsed(&self, group: u32) -> bool {
        self.collapsed.contains(&group)
    }

    /// Folds or unfolds a group in the panel (a view setting, not an undo step). Returns
    /// whether it is collapsed now.
    pub fn toggle_collapsed(&mut self, group: u32) -> Result<bool, StackError> {
        self.group(group).ok_or(StackError::NoSuchGroup(group))?;
        if self.is_collapsed(group) {
            self.collapsed.retain(|&c| c != group);
            Ok(false)
        } else {
            self.collapsed.push(group);
            Ok(true)
        }
    }

    pub fn can_undo(&self) -> bool {
        !self.undo.is_empty()
    }

    pub fn can_redo(&self) -> bool {
        !self.redo.is_empty()
    }

    /// Restores the arrangement before the last change. Returns whether there was one.
    pub fn undo(&mut self) -> bool {
        match self.undo.pop() {
            Some(prev) => {
                let now = self.restore(prev);
                self.redo.push(now);
                self.last_op = None;
                true
            }
            None => false,
        }
    }

    /// Re-applies the last undone change. Returns whether there was one.
    pub fn redo(&mut self) -> bool {
        match self.redo.pop() {
            Some(next) => {
                let now = self.restore(next);
                self.undo.push(now);
                self.last_op = None;
                true
            }
            None => false,
        }
    }

    /// Whether a layer shows and its opacity, its group's applied.
    pub fn effective(&self, layer: &Layer) -> (bool, f32) {
        match layer.group.and_then(|g| self.group(g)) {
            Some(g) => (layer.visible && g.visible, layer.opacity * g.opacity),
            None => (layer.visible, layer.opacity),
        }
    }

    /// What the canvas draws: visible layers with opacity above 0, bottom first, as shown
    /// (honouring the before/after toggle and the groups' visibility and opacity).
    pub fn to_composite(&self) -> Vec<LayerPixels<'_>> {
        self.layers
            .iter()
            .filter_map(|l| {
                let (visible, opacity) = self.effective(l);
                (visible && opacity > 0.0).then_some(LayerPixels {
                    rgba: &l.shown().rgba,
                    opacity,
                })
            })
            .collect()
    }

    /// What the canvas's live compositor draws: every layer, hidden ones included (so a toggle
    /// is seen as a change to one layer), bottom first, as shown.
    pub fn to_stage(&self) -> Vec<StageLayer<'_>> {
        self.layers
            .iter()
            .map(|l| {
                let (visible, opacity) = self.effective(l);
                StageLayer {
                    pixels: &l.shown().rgba,
                    visible,
                    opacity,
                }
            })
            .collect()
    }

    /// What an export flattens: visible layers' current pixels (an edit under preview as
    /// "before" is still the layer's content).
    pub fn to_export_composite(&self) -> Vec<LayerPixels<'_>> {
        self.layers
            .iter()
            .filter_map(|l| {
                let (visible, opacity) = self.effective(l);
                (visible && opacity > 0.0).then_some(LayerPixels {
                    rgba: &l.current().bitmap.rgba,
                    opacity,
                })
            })
            .collect()
    }
}

/// The run that produced a stack, recorded in an export's manifest (`run`).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct RunInfo {
    pub model: String,
    pub prompt: String,
    pub seed: u64,
    pub layer_num: u32,
    pub resolution: u32,
    pub steps: u32,
    pub cfg_scale: f32,
    /// Seconds the server spent decomposing.
    pub generation_time: f64,
    /// The automatic caption used as the prompt, when the prompt was empty.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub caption: Option<String>,
    /// What an automatic layer count kept and dropped.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auto_layers: Option<crate::layer_count::AutoLayers>,
}

impl LayerStack {
    /// Flattens the visible layers (current pixels, opacity applied) into one image.
    pub fn flatten(&self) -> image::RgbaImage {
        let mut out = image::RgbaImage::new(self.width, self.height);
        crate::compose::Compositor::default()
            .composite_into(self.width, self.height, &self.to_export_composite(), &mut out)
            .expect("every layer of a stack has the stack's size");
        out
    }

    /// The run record an export carries: the run's seed and parameters, and each edited
    /// layer's instructions (`edits`), or `None` when there is neither.
    pub fn export_run(&self, run: Option<&RunInfo>) -> Result<Option<serde_json::Value>, String> {
        let mut run_json = match run {
            Some(r) => serde_json::to_value(r).map_err(|e| e.to_string())?,
            None => serde_json::json!({}),
        };
        let edits: serde_json::Map<String, serde_json::Value> = self
            .layers
            .iter()
            .filter(|l| l.is_edited())
            .map(|l| (l.name.clone(), serde_json::json!(l.instructions())))
            .collect();
        if !edits.is_empty() {
            run_json["edits"] = serde_json::Value::Object(edits);
        }
        Ok((run.is_some() || run_json.as_object().is_some_and(|o| !o.is_empty())).then_some(run_json))
    }

    /// Exports the stack as it stands: every layer's current pixels in stack order (bottom
    /// first) with its name, visibility and opacity, the flattened visible layers, and the run
    /// (see [`Self::export_run`]). See [`crate::export`] for the formats.
    pub fn export(&self, format: crate::export::Format, run: Option<&RunInfo>) -> Result<Vec<u8>, String> {
        let composite = self.flatten();
        // The layers' PNGs are already at hand (their data URLs): the PNG-based formats reuse them.
        let needs_png = !matches!(format, crate::export::Format::Psd | crate::export::Format::Png);
        let pngs = if needs_png {
            self.layers
                .iter()
                .map(|l| l.current().bitmap.png_bytes().map(Some))
                .collect::<Result<Vec<_>, _>>()?
        } else {
            vec![None; self.layers.len()]
        };
        let doc = crate::export::Document {
            width: self.width,
            height: self.height,
            layers: self
                .layers
                .iter()
                .zip(&pngs)
                .map(|(l, png)| crate::export::Layer {
                    name: &l.name,
                    visible: l.visible,
                    opacity: l.opacity,
                    rgba: &l.current().bitmap.rgba,
                    png: png.as_deref(),
                })
                .collect(),
            groups: self
                .groups
                .iter()
                .filter_map(|g| {
                    Some(crate::export::Group {
                        name: &g.name,
                        visible: g.visible,
                        opacity: g.opacity,
                        layers: self.group_range(g.id)?,
                    })
                })
                .collect(),
            composite: composite.as_raw(),
            composite_png: None,
            run: self.export_run(run)?,
        };
        crate::export::export(&doc, format).map_err(|e| e.to_string())
    }
}

fn check_size(name: &str, bitmap: &Bitmap, width: u32, height: u32) -> Result<(), StackError> {
    let expected = width as usize * height as usize * 4;
    if bitmap.width != width || bitmap.height != height || bitmap.rgba.len() != expected {
        return Err(StackError::SizeMismatch {
            name: name.to_string(),
            got: format!("{}×{}", bitmap.width, bitmap.height),
            width,
            height,
        });
    }
    Ok(())
}

/// A decomposition's result as the app holds it: the model's own composite (index 0 of the
/// response) and the layer stack (Layer 1 at the bottom).
#[derive(Debug, Clone, PartialEq)]
pub struct Decomposition {
    pub composite: Bitmap,
    pub stack: LayerStack,
}

impl Decomposition {
    /// Decodes every image of a response. The response lists the composite first, then
    /// Layer 1 (bottom) … Layer N (top), which is the stack's order.
    pub fn from_response(response: &DecomposeResponse) -> Result<Self, StackError> {
        let mut images = response.layers.clone();
        images.sort_by_key(|l| l.index);
        let mut iter = images.into_iter();
        let first = iter.next().ok_or(StackError::NoComposite)?;
        if first.index != 0 {
            return Err(StackError::NoComposite);
        }
        let decode = |name: &str, url: &str| {
            Bitmap::from_data_url(url).map_err(|reason| StackError::Decode {
                name: name.to_string(),
                reason,
            })
        };
        let composite = decode("the composite", &first.image)?;
        let layers = iter
            .map(|l| Ok((l.name.clone(), decode(&l.name, &l.image)?)))
            .collect::<Result<Vec<_>, StackError>>()?;
        let stack = LayerStack::new(layers)?;
        check_size("the composite", &composite, stack.width, stack.height)?;
        Ok(Self { composite, stack })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::LayerImage;
    use crate::compose::Compositor;
    use crate::image_data::{encode_png, png_data_url};

    fn solid(c: [u8; 4]) -> Bitmap {
        Bitmap::from_rgba(2, 1, [c, c].concat(), format!("data:{c:?}"))
    }

    fn stack3() -> LayerStack {
        LayerStack::new(vec![
            ("Layer 1".into(), solid([255, 0, 0, 255])),
            ("Layer 2".into(), solid([0, 255, 0, 255])),
            ("Layer 3".into(), solid([0, 0, 255, 128])),
        ])
        .unwrap()
    }

    fn names(s: &LayerStack) -> Vec<&str> {
        s.layers().iter().map(|l| l.name.as_str()).collect()
    }

    fn composite(s: &LayerStack) -> [u8; 4] {
        let mut out = vec![0u8; (s.width() * s.height() * 4) as usize];
        Compositor::default()
            .composite_into(s.width(), s.height(), &s.to_composite(), &mut out)
            .unwrap();
        out[..4].try_into().unwrap()
    }

    #[test]
    fn ids_are_stable_and_the_panel_lists_top_down() {
        let s = stack3();
        assert_eq!(s.ids_top_down(), [3, 2, 1]);
        assert_eq!(s.position(1), Some(1));
        assert_eq!(s.position(3), Some(3));
        assert_eq!(s.position(9), None);
    }

    #[test]
    fn move_up_and_down_stop_at_the_ends() {
        let mut s = stack3();
        assert!(s.move_up(1).unwrap());
        assert_eq!(names(&s), ["Layer 2", "Layer 1", "Layer 3"]);
        assert!(s.move_up(1).unwrap());
        assert!(!s.move_up(1).unwrap(), "already on top");
        assert_eq!(names(&s), ["Layer 2", "Layer 3", "Layer 1"]);
        assert!(!s.move_down(2).unwrap(), "already at the bottom");
        assert!(s.move_down(1).unwrap());
        assert_eq!(names(&s), ["Layer 2", "Layer 1", "Layer 3"]);
        assert_eq!(s.move_up(42), Err(StackError::NoSuchLayer(42)));
    }

    #[test]
    fn drag_onto_a_row_takes_its_place() {
        let mut s = stack3();
        assert!(s.move_onto(3, 1).unwrap(), "top dropped on bottom");
        assert_eq!(names(&s), ["Layer 3", "Layer 1", "Layer 2"]);
        assert!(s.move_onto(3, 2).unwrap(), "bottom dropped on top");
        assert_eq!(names(&s), ["Layer 1", "Layer 2", "Layer 3"]);
        assert!(!s.move_onto(2, 2).unwrap());
        assert!(!s.can_redo());
    }

    #[test]
    fn reorder_and_visibility_change_the_composite() {
        let mut s = stack3();
        // Half blue over opaque green.
        assert_eq!(composite(&s), [0, 127, 128, 255]);
        s.set_visible(3, false).unwrap();
        assert_eq!(composite(&s), [0, 255, 0, 255]);
        assert!(s.toggle_visible(3).unwrap());
        s.move_to(2, 0).unwrap();
        // Green at the bottom, red hides it, blue over red.
        assert_eq!(names(&s), ["Layer 2", "Layer 1", "Layer 3"]);
        assert_eq!(composite(&s), [127, 0, 128, 255]);
        s.set_visible(1, false).unwrap();
        s.set_visible(2, false).unwrap();
        s.set_visible(3, false).unwrap();
        assert!(s.to_composite().is_empty());
    }

    #[test]
    fn opacity_is_clamped_scales_alpha_and_zero_skips_the_layer() {
        let mut s = stack3();
        s.set_visible(2, false).unwrap();
        s.set_visible(3, false).unwrap();
        s.set_opacity(1, 0.5).unwrap();
        assert_eq!(composite(&s), [255, 0, 0, 128]);
        s.set_opacity(1, 7.0).unwrap();
        assert_eq!(s.get(1).unwrap().opacity, 1.0);
        s.set_opacity(1, f32::NAN).unwrap();
        assert_eq!(s.get(1).unwrap().opacity, 1.0);
        s.set_opacity(1, -1.0).unwrap();
        assert!(s.to_composite().is_empty());
    }

    #[test]
    fn undo_and_redo_walk_the_history() {
        let mut s = stack3();
        assert!(!s.can_undo() && !s.undo());
        s.move_up(1).unwrap();
        s.set_visible(3, false).unwrap();
        assert!(s.undo());
        assert!(s.get(3).unwrap().visible);
        assert_eq!(names(&s), ["Layer 2", "Layer 1", "Layer 3"]);
        assert!(s.undo());
        assert_eq!(names(&s), ["Layer 1", "Layer 2", "Layer 3"]);
        assert!(!s.undo());
        assert!(s.redo() && s.redo());
        assert!(!s.get(3).unwrap().visible);
        assert!(!s.redo());
        // A new change after undo drops the redo branch.
        s.undo();
        s.set_opacity(2, 0.3).unwrap();
        assert!(!s.can_redo());
    }

    #[test]
    fn a_slider_drag_is_one_undo_step() {
        let mut s = stack3();
        for v in [0.9, 0.8, 0.7, 0.6] {
            s.set_opacity(2, v).unwrap();
        }
        s.end_gesture();
        s.set_opacity(2, 0.1).unwrap();
        assert!(s.undo());
        assert_eq!(s.get(2).unwrap().opacity, 0.6);
        assert!(s.undo());
        assert_eq!(s.get(2).unwrap().opacity, 1.0);
        assert!(!s.can_undo());
        // Another layer's opacity starts a new step.
        s.set_opacity(1, 0.5).unwrap();
        s.set_opacity(2, 0.5).unwrap();
        assert!(s.undo());
        assert_eq!((s.get(1).unwrap().opacity, s.get(2).unwrap().opacity), (0.5, 1.0));
    }

    #[test]
    fn history_is_bounded() {
        let mut s = stack3();
        for _ in 0..(MAX_HISTORY + 20) {
            s.toggle_visible(1).unwrap();
        }
        let mut n = 0;
        while s.undo() {
            n += 1;
        }
        assert_eq!(n, MAX_HISTORY);
    }

    #[test]
    fn edits_keep_the_original_for_before_after_and_undo() {
        let mut s = stack3();
        let yellow = solid([255, 255, 0, 255]);
        assert!(!s.toggle_before(3).unwrap(), "nothing to compare before an edit");
        s.apply_edit(3, yellow.clone(), "make it yellow").unwrap();
        let l = s.get(3).unwrap();
        assert!(l.is_edited());
        assert_eq!(l.shown(), &yellow);
        assert_eq!(l.instructions(), ["make it yellow"]);
        assert_eq!(composite(&s), [255, 255, 0, 255]);
        // Before: the original half-transparent blue is shown, but export keeps the edit.
        assert!(s.toggle_before(3).unwrap());
        assert_eq!(composite(&s), [0, 127, 128, 255]);
        assert!(std::ptr::eq(s.to_export_composite()[2].rgba, &*yellow.rgba));
        assert!(!s.toggle_before(3).unwrap());
        // A second edit, then undo the edits one by one.
        s.apply_edit(3, solid([9, 9, 9, 255]), "darker").unwrap();
        assert_eq!(s.get(3).unwrap().versions.len(), 3);
        assert!(s.undo_edit(3).unwrap());
        assert_eq!(s.get(3).unwrap().shown(), &yellow);
        assert!(s.undo_edit(3).unwrap());
        assert!(!s.get(3).unwrap().is_edited());
        assert!(!s.undo_edit(3).unwrap());
        // Undoing the "undo edit" brings the edit back.
        assert!(s.undo());
        assert_eq!(s.get(3).unwrap().shown(), &yellow);
    }

    #[test]
    fn an_edit_of_another_size_is_refused() {
        let mut s = stack3();
        let big = Bitmap::from_rgba(1, 1, vec![0; 4], "x");
        let err = s.apply_edit(2, big, "x").unwrap_err();
        assert!(
            err.to_string().contains("Layer 2 is 1×1, but the stack is 2×1"),
            "{err}"
        );
        assert!(!s.can_undo());
    }

    #[test]
    fn empty_and_mismatched_stacks_are_refused() {
        assert_eq!(LayerStack::new(vec![]), Err(StackError::Empty));
        let err = LayerStack::new(vec![
            ("a".into(), solid([0; 4])),
            ("b".into(), Bitmap::from_rgba(1, 2, vec![0; 8], "y")),
        ])
        .unwrap_err();
        assert!(
            matches!(err, StackError::SizeMismatch { ref name, .. } if name == "b"),
            "{err}"
        );
    }

    fn png_url(c: [u8; 4]) -> String {
        png_data_url(&encode_png(&image::RgbaImage::from_pixel(3, 2, image::Rgba(c))).unwrap())
    }

    fn response(layers: Vec<LayerImage>) -> DecomposeResponse {
        DecomposeResponse {
            layer_count: layers.len().saturating_sub(1) as u32,
            layers,
            zip_data: String::new(),
            generation_time: 1.5,
            resolution: 640,
            layer_order: "bottom-to-top".into(),
            seed: 7,
            width: 3,
            height: 2,
            caption: None,
            files: Vec::new(),
            auto_layers: None,
        }
    }

    #[test]
    fn a_response_becomes_composite_plus_bottom_first_stack() {
        let img = |name: &str, index, c| LayerImage {
            name: name.into(),
            image: png_url(c),
            index,
        };
        // Out of order on purpose: the index decides.
        let r = response(vec![
            img("Layer 2", 2, [0, 0, 255, 255]),
            img("Composite", 0, [1, 2, 3, 255]),
            img("Layer 1", 1, [255, 0, 0, 255]),
        ]);
        let d = Decomposition::from_response(&r).unwrap();
        assert_eq!(&d.composite.rgba[..4], &[1, 2, 3, 255]);
        assert_eq!(names(&d.stack), ["Layer 1", "Layer 2"]);
        assert_eq!((d.stack.width(), d.stack.height()), (3, 2));
        assert_eq!(&d.stack.layers()[1].current().bitmap.rgba[..4], &[0, 0, 255, 255]);
        let png = d.stack.layers()[0].current().bitmap.png_bytes().unwrap();
        assert_eq!(&png[..4], b"\x89PNG");
    }

    #[test]
    fn a_broken_response_names_the_problem() {
        assert_eq!(
            Decomposition::from_response(&response(vec![])),
            Err(StackError::NoComposite)
        );
        let bad = response(vec![
            LayerImage {
                name: "Composite".into(),
                image: png_url([0; 4]),
                index: 0,
            },
            LayerImage {
                name: "Layer 1".into(),
                image: "data:image/png;base64,AAAA".into(),
                index: 1,
            },
        ]);
        let err = Decomposition::from_response(&bad).unwrap_err();
        assert!(err.to_string().starts_with("Layer 1 could not be decoded"), "{err}");
        let only_composite = response(vec![LayerImage {
            name: "Composite".into(),
            image: png_url([0; 4]),
            index: 0,
        }]);
        assert_eq!(Decomposition::from_response(&only_composite), Err(StackError::Empty));
    }

    #[test]
    fn export_zip_follows_the_stack_and_records_the_run() {
        use std::io::Read;
        let (s, run) = arranged_stack();
        let zip = s.export(crate::export::Format::Zip, Some(&run)).unwrap();
        let mut archive = zip::ZipArchive::new(std::io::Cursor::new(zip)).unwrap();
        let names: Vec<String> = (0..archive.len())
            .map(|i| archive.by_index(i).unwrap().name().unwrap().to_string())
            .collect();
        assert_eq!(
            names,
            ["composite.png", "01_layer-2.png", "02_layer-1.png", "manifest.json"]
        );
        let read = |archive: &mut zip::ZipArchive<_>, name: &str| {
            let mut v = Vec::new();
            archive.by_name(name).unwrap().read_to_end(&mut v).unwrap();
            v
        };
        // Layer 2 is now at the bottom and carries its edit (green); Layer 1 is hidden.
        let bottom = crate::image_data::decode_image_bytes(&read(&mut archive, "01_layer-2.png"), 100).unwrap();
        assert_eq!(bottom.get_pixel(0, 0).0, [0, 255, 0, 255]);
        let flat = crate::image_data::decode_image_bytes(&read(&mut archive, "composite.png"), 100).unwrap();
        assert_eq!(
            flat.get_pixel(2, 1).0,
            [0, 255, 0, 64],
            "only the visible green layer at 25 %"
        );
        let json: serde_json::Value = serde_json::from_slice(&read(&mut archive, "manifest.json")).unwrap();
        assert_eq!(json["layers"].as_array().unwrap().len(), 2);
        assert_eq!(json["layers"][0]["name"], "Layer 2");
        assert_eq!(json["layers"][0]["opacity"], 0.25);
        assert_eq!(json["layers"][1]["visible"], false);
        assert_eq!(json["run"]["seed"], 42);
        assert_eq!(json["run"]["steps"], 2);
        assert_eq!(json["run"]["edits"]["Layer 2"], serde_json::json!(["make it green"]));
    }

    #[test]
    fn every_layered_format_follows_the_stack() {
        use crate::export::Format;
        let (s, run) = arranged_stack();
        // PSD, read back by an independent parser: Layer 2 (edited green, 25 %) at the bottom,
        // Layer 1 hidden on top (psd 0.3.5 reports the hidden flag as `visible()`).
        let psd = ::psd::Psd::from_bytes(&s.export(Format::Psd, Some(&run)).unwrap()).unwrap();
        // (psd 0.3.5 lists the top layer first.)
        let (bottom, top) = (psd.layer_by_idx(1), psd.layer_by_idx(0));
        assert_eq!((bottom.name(), top.name()), ("Layer 2", "Layer 1"));
        assert_eq!((bottom.opacity(), bottom.visible()), (64, false));
        assert_eq!((top.opacity(), top.visible()), (255, true));
        assert_eq!(&bottom.rgba()[..4], &[0, 255, 0, 255]);
        // ORA lists the top layer first.
        let ora = s.export(Format::Ora, Some(&run)).unwrap();
        let mut archive = zip::ZipArchive::new(std::io::Cursor::new(ora)).unwrap();
        let mut xml = String::new();
        std::io::Read::read_to_string(&mut archive.by_name("stack.xml").unwrap(), &mut xml).unwrap();
        let at = |needle: &str| xml.find(needle).unwrap_or_else(|| panic!("{needle} in {xml}"));
        assert!(at("name=\"Layer 1\"") < at("name=\"Layer 2\""));
        assert!(xml.contains("opacity=\"0.25\" visibility=\"visible\""));
        assert!(xml.contains("opacity=\"1\" visibility=\"hidden\""));
        // PPTX: bottom first in the shape tree, the hidden one marked.
        let pptx = s.export(Format::Pptx, Some(&run)).unwrap();
        let mut archive = zip::ZipArchive::new(std::io::Cursor::new(pptx)).unwrap();
        let mut slide = String::new();
        std::io::Read::read_to_string(&mut archive.by_name("ppt/slides/slide1.xml").unwrap(), &mut slide).unwrap();
        let at = |needle: &str| slide.find(needle).unwrap_or_else(|| panic!("{needle} in {slide}"));
        assert!(at("name=\"Layer 2\"") < at("name=\"Layer 1\" descr=\"Layer 1\" hidden=\"1\""));
        // The flattened PNG is the visible layers only.
        let png = s.export(Format::Png, None).unwrap();
        let flat = crate::image_data::decode_image_bytes(&png, 100).unwrap();
        assert_eq!(flat.get_pixel(2, 1).0, [0, 255, 0, 64]);
    }

    /// stack3 with Layer 2 split into two parts (yellow below, transparent white above).
    fn split_stack() -> (LayerStack, u32) {
        let mut s = stack3();
        let parts = vec![
            ("Layer 2.1".into(), solid([255, 255, 0, 255])),
            ("Layer 2.2".into(), solid([255, 255, 255, 0])),
        ];
        let g = s.split(2, parts).unwrap();
        (s, g)
    }

    #[test]
    fn a_split_layer_becomes_a_group_that_undo_restores() {
        let (mut s, g) = split_stack();
        assert_eq!(names(&s), ["Layer 1", "Layer 2.1", "Layer 2.2", "Layer 3"]);
        assert_eq!(g, 4, "ids continue after the layers'");
        assert_eq!(s.group(g).unwrap().name, "Layer 2");
        assert_eq!(
            s.rows_top_down(),
            [
                Row::Layer(3),
                Row::Group(g),
                Row::Layer(6),
                Row::Layer(5),
                Row::Layer(1)
            ]
        );
        // Collapsing hides the parts' rows, not the parts.
        assert!(s.toggle_collapsed(g).unwrap());
        assert_eq!(s.rows_top_down(), [Row::Layer(3), Row::Group(g), Row::Layer(1)]);
        assert_eq!(s.to_composite().len(), 4);
        assert!(!s.toggle_collapsed(g).unwrap());
        // Splitting a part again is refused (one level in the page).
        assert!(matches!(
            s.split(5, vec![("x".into(), solid([0; 4]))]),
            Err(StackError::Nested(_))
        ));
        assert!(matches!(
            s.split(1, vec![("x".into(), Bitmap::from_rgba(1, 1, vec![0; 4], "x"))]),
            Err(StackError::SizeMismatch { .. })
        ));
        // Unsplit restores the layer where the group is; undo brings the group back.
        let before = s.clone();
        assert_eq!(s.unsplit(g).unwrap(), 2);
        assert_eq!(names(&s), ["Layer 1", "Layer 2", "Layer 3"]);
        assert!(s.groups().is_empty());
        assert!(s.undo());
        assert_eq!(names(&s), names(&before));
        assert_eq!(s.groups(), before.groups());
        // Undoing the split itself restores the original stack.
        assert!(s.undo());
        assert_eq!(names(&s), ["Layer 1", "Layer 2", "Layer 3"]);
        assert!(s.redo());
        assert_eq!(s.groups().len(), 1);
    }

    #[test]
    fn a_group_hides_and_moves_as_one_and_its_parts_stay_together() {
        let (mut s, g) = split_stack();
        let top = composite(&s);
        // Hiding the group hides both parts in every view of the stack.
        assert!(!s.toggle_group_visible(g).unwrap());
        assert_eq!(s.to_composite().len(), 2);
        assert_eq!(s.to_stage().iter().filter(|l| l.visible).count(), 2);
        assert_ne!(composite(&s), top);
        s.set_group_visible(g, true).unwrap();
        assert_eq!(composite(&s), top);
        // The group moves past a whole layer; a part stays inside its group.
        assert!(s.move_group(g, true).unwrap());
        assert_eq!(names(&s), ["Layer 1", "Layer 3", "Layer 2.1", "Layer 2.2"]);
        assert!(!s.can_move_group(g, true));
        assert!(!s.move_up(6).unwrap(), "the top part is on top of its group");
        assert!(s.move_down(6).unwrap());
        assert_eq!(names(&s), ["Layer 1", "Layer 3", "Layer 2.2", "Layer 2.1"]);
        assert!(!s.can_move(6, false));
        // A layer outside passes the group whole, by arrow or drag.
        assert!(s.move_up(3).unwrap());
        assert_eq!(names(&s), ["Layer 1", "Layer 2.2", "Layer 2.1", "Layer 3"]);
        assert!(s.move_onto(1, 3).unwrap());
        assert_eq!(names(&s), ["Layer 2.2", "Layer 2.1", "Layer 3", "Layer 1"]);
        // Dragging a part outside its group leaves it at the group's edge.
        s.move_onto(6, 1).unwrap();
        assert_eq!(&names(&s)[..2], ["Layer 2.1", "Layer 2.2"]);
    }

    #[test]
    fn exports_keep_the_group() {
        let (mut s, _) = arranged_stack();
        let part = |c| Bitmap::from_data_url(&png_url(c)).unwrap();
        let parts = vec![
            ("Layer 2.1".into(), part([255, 0, 0, 255])),
            ("Layer 2.2".into(), part([0, 0, 0, 0])),
        ];
        let g = s.split(2, parts).unwrap();
        s.set_group_visible(g, false).unwrap();
        let zip = s.export(crate::export::Format::Zip, None).unwrap();
        let mut archive = zip::ZipArchive::new(std::io::Cursor::new(zip)).unwrap();
        let mut text = String::new();
        std::io::Read::read_to_string(&mut archive.by_name("manifest.json").unwrap(), &mut text).unwrap();
        let json: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(json["layers"].as_array().unwrap().len(), 3);
        let tree = json["tree"].as_array().unwrap();
        let group = tree.iter().find(|n| n.get("group").is_some()).unwrap();
        assert_eq!(
            (group["group"].as_str(), group["visible"].as_bool()),
            (Some("Layer 2"), Some(false))
        );
        assert_eq!(group["children"].as_array().unwrap().len(), 2);
        // The flattened image leaves the hidden group out.
        assert_eq!(s.flatten().get_pixel(0, 0).0, composite(&s));
        let psd = ::psd::Psd::from_bytes(&s.export(crate::export::Format::Psd, None).unwrap()).unwrap();
        assert_eq!(psd.layers().len(), 3);
        assert!(psd.groups().values().any(|grp| grp.name() == "Layer 2"));
    }

    /// Two layers, reordered (Layer 2 at the bottom, edited green, at 25 %; Layer 1 hidden on
    /// top), and the run that made them.
    fn arranged_stack() -> (LayerStack, RunInfo) {
        let img = |name: &str, index, c| LayerImage {
            name: name.into(),
            image: png_url(c),
            index,
        };
        let r = response(vec![
            img("Composite", 0, [1, 2, 3, 255]),
            img("Layer 1", 1, [255, 0, 0, 255]),
            img("Layer 2", 2, [0, 0, 255, 128]),
        ]);
        let mut s = Decomposition::from_response(&r).unwrap().stack;
        s.move_up(1).unwrap();
        s.set_opacity(2, 0.25).unwrap();
        s.set_visible(1, false).unwrap();
        s.apply_edit(
            2,
            Bitmap::from_data_url(&png_url([0, 255, 0, 255])).unwrap(),
            "make it green",
        )
        .unwrap();
        let run = RunInfo {
            model: "tiny".into(),
            prompt: "a scene".into(),
            seed: 42,
            layer_num: 2,
            resolution: 640,
            steps: 2,
            cfg_scale: 4.0,
            generation_time: 1.5,
            caption: None,
            auto_layers: None,
        };
        (s, run)
    }
}
