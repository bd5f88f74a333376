//! The prompt templates of the pipelines, byte-for-byte as diffusers 0.42.1 writes them.
//!
//! Both pipelines wrap the user's text in a chat template, run the text encoder over the whole
//! thing, and drop the template's first tokens (the system turn and `<|im_start|>user\n`), so the
//! DiT sees the user's text plus the trailing `<|im_end|>\n<|im_start|>assistant\n` (5 tokens).
//! The drop counts are token counts of the template prefix under the Qwen2 tokenizer.

/// A chat template with one `{}` slot and how many leading tokens the pipeline drops.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PromptTemplate {
    /// The template text; `{}` marks where the prompt goes.
    pub template: &'static str,
    /// Tokens dropped from the front of the encoded text (`prompt_template_encode_start_idx`).
    pub drop: usize,
}

/// Text-to-image / layered template (`QwenImageLayeredPipeline.prompt_template_encode`, identical
/// to base Qwen-Image's).
pub const LAYERED_TEMPLATE: &str = "<|im_start|>system\nDescribe the image by detailing the color, shape, size, texture, quantity, text, spatial relationships of the objects and background:<|im_end|>\n<|im_start|>user\n{}<|im_end|>\n<|im_start|>assistant\n";
/// `QwenImageLayeredPipeline.prompt_template_encode_start_idx`.
pub const LAYERED_DROP: usize = 34;

/// Edit-2509 template (`QwenImageEditPlusPipeline.prompt_template_encode`); the slot receives
/// the image placeholders ([`edit_image_prefix`]) followed by the instruction.
pub const EDIT_TEMPLATE: &str = "<|im_start|>system\nDescribe the key features of the input image (color, shape, size, texture, objects, background), then explain how the user's text instruction should alter or modify the image. Generate a new image that meets the user's requirements while maintaining consistency with the original input where appropriate.<|im_end|>\n<|im_start|>user\n{}<|im_end|>\n<|im_start|>assistant\n";
/// `QwenImageEditPlusPipeline.prompt_template_encode_start_idx`.
pub const EDIT_DROP: usize = 64;

/// Edit-2509's per-image placeholder (`img_prompt_template`), `{}` = 1-based picture number.
pub const EDIT_IMAGE_TEMPLATE: &str = "Picture {}: <|vision_start|><|image_pad|><|vision_end|>";

/// Layered's English captioning prompt (`image_caption_prompt_en`), used when the prompt is empty.
/// One piece per line of the Python source: its triple-quoted string has real line breaks as well
/// as `\n` escapes, and both are newlines in the value. 221 tokens before image expansion.
pub const CAPTION_PROMPT_EN: &str = concat!(
    "<|im_start|>system\n",
    "You are a helpful assistant.<|im_end|>\n",
    "<|im_start|>user\n",
    "# Image Annotator\n",
    "You are a professional\n",
    "image annotator. Please write an image caption based on the input image:\n",
    "1. Write the caption using natural,\n",
    "descriptive language without structured formats or rich text.\n",
    "2. Enrich caption details by including: \n",
    " - Object\n",
    "attributes, such as quantity, color, shape, size, material, state, position, actions, and so on\n",
    " - Vision Relations\n",
    "between objects, such as spatial relations, functional relations, possessive relations, attachment relations, action\n",
    "relations, comparative relations, causal relations, and so on\n",
    " - Environmental details, such as weather, lighting,\n",
    "colors, textures, atmosphere, and so on\n",
    " - Identify the text clearly visible in the image, without translation or\n",
    "explanation, and highlight it in the caption with quotation marks\n",
    "3. Maintain authenticity and accuracy:\n",
    " - Avoid\n",
    "generalizations\n",
    " - Describe all visible information in the image, while do not add information not explicitly shown in\n",
    "the image\n",
    "<|vision_start|><|image_pad|><|vision_end|><|im_end|>\n",
    "<|im_start|>assistant\n",
);

/// Layered's Chinese captioning prompt (`image_caption_prompt_cn`, the pipeline's default);
/// 209 tokens before image expansion.
pub const CAPTION_PROMPT_CN: &str = concat!(
    "<|im_start|>system\n",
    "You are a helpful assistant.<|im_end|>\n",
    "<|im_start|>user\n",
    "# 图像标注器\n",
    "你是一个专业的图像标注器。请基于输入图像，撰写图注:\n",
    "1.\n",
    "使用自然、描述性的语言撰写图注，不要使用结构化形式或富文本形式。\n",
    "2. 通过加入以下内容，丰富图注细节：\n",
    " - 对象的属性：如数量、颜色、形状、大小、位置、材质、状态、动作等\n",
    " -\n",
    "对象间的视觉关系：如空间关系、功能关系、动作关系、从属关系、比较关系、因果关系等\n",
    " - 环境细节：例如天气、光照、颜色、纹理、气氛等\n",
    " - 文字内容：识别图像中清晰可见的文字，不做翻译和解释，用引号在图注中强调\n",
    "3.\n",
    "保持真实性与准确性：\n",
    " - 不要使用笼统的描述\n",
    " -\n",
    "描述图像中所有可见的信息，但不要加入没有在图像中出现的内容\n",
    "<|vision_start|><|image_pad|><|vision_end|><|im_end|>\n",
    "<|im_start|>assistant\n",
);

impl PromptTemplate {
    pub const LAYERED: Self = Self {
        template: LAYERED_TEMPLATE,
        drop: LAYERED_DROP,
    };
    pub const EDIT: Self = Self {
        template: EDIT_TEMPLATE,
        drop: EDIT_DROP,
    };

    /// The template with `prompt` in its slot, as Python's `template.format(prompt)` (the prompt
    /// is inserted verbatim, braces and all).
    pub fn format(&self, prompt: &str) -> String {
        fill_slot(self.template, prompt)
    }

    /// The text before the slot: what the drop count counts.
    pub fn prefix(&self) -> &'static str {
        self.template
            .split_once("{}")
            .map_or(self.template, |(prefix, _)| prefix)
    }
}

/// The Edit-2509 placeholders for `n_images` condition images: `"Picture 1: <|vision_start|>…"`
/// repeated, numbered from 1; prepend it to the instruction before [`PromptTemplate::format`].
pub fn edit_image_prefix(n_images: usize) -> String {
    (1..=n_images)
        .map(|i| fill_slot(EDIT_IMAGE_TEMPLATE, &i.to_string()))
        .collect()
}

fn fill_slot(template: &str, value: &str) -> String {
    match template.split_once("{}") {
        Some((before, after)) => [before, value, after].concat(),
        None => template.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// FNV-1a 64 of the bytes: the values were computed in Python from the strings diffusers 0.42.1
    /// holds (`pipeline_qwenimage_layered.py`, `pipeline_qwenimage_edit_plus.py`), so any edit to
    /// a constant fails here.
    fn fnv1a(bytes: &[u8]) -> u64 {
        bytes
            .iter()
            .fold(0xcbf29ce484222325, |h, &b| (h ^ b as u64).wrapping_mul(0x100000001b3))
    }

    #[test]
    fn templates_match_the_reference_bytes() {
        for (text, len, hash) in [
            (LAYERED_TEMPLATE, 215, 0x1144029532f1af0e_u64),
            (EDIT_TEMPLATE, 386, 0xb88cb0b4d49fbfad),
            (CAPTION_PROMPT_EN, 1119, 0xef6ee931bbb5acf8),
            (CAPTION_PROMPT_CN, 954, 0xb415da80ddb52758),
        ] {
            assert_eq!(text.len(), len, "{text:?}");
            assert_eq!(fnv1a(text.as_bytes()), hash, "{text:?}");
        }
    }

    #[test]
    fn format_inserts_the_prompt_verbatim() {
        let t = PromptTemplate::LAYERED;
        let s = t.format("a {cat}");
        assert!(s.starts_with(t.prefix()));
        assert!(s.ends_with("user\na {cat}<|im_end|>\n<|im_start|>assistant\n"), "{s:?}");
        assert_eq!(t.format("").len(), LAYERED_TEMPLATE.len() - 2);
        assert_eq!(
            edit_image_prefix(2),
            "Picture 1: <|vision_start|><|image_pad|><|vision_end|>Picture 2: <|vision_start|><|image_pad|><|vision_end|>"
        );
        assert_eq!(edit_image_prefix(0), "");
    }
}
