"""A chat's images: the ones attached to the next message (/image), and every image in the history
prepared once (transformers' processor) and kept by path and content digest.

A user message with images is stored OpenAI-style as content parts:
    [{"type": "image", "image": "/abs/path.png", "digest": "<sha256>"}, {"type": "text", "text": ...}]
so /save and /load keep the references; the chat template renders each image part as
`<|vision_start|><|image_pad|><|vision_end|>`, and `prompt()` widens each pad to the image's tokens.
"""

from __future__ import annotations

from pathlib import Path

from ..errors import InputError
from ..image_prompt import ImagePrompt, combine_images, expand_image_pads
from ..vision_input import PreparedImages, load_image_processor, prepare_images


class ChatImages:
    def __init__(self, engine, min_pixels: int | None = None, max_pixels: int | None = None):
        self.engine = engine
        self.min_pixels, self.max_pixels = min_pixels, max_pixels
        self.pending: list[PreparedImages] = []     # attached to the next message, one image each
        self._prepared: dict[str, PreparedImages] = {}  # digest -> that image, prepared
        self._processor = None

    def _check_engine(self) -> None:
        if self.engine.vision is None:
            raise InputError(self.engine.vision_note or "this model takes no images")

    def prepare(self, path: str | Path) -> PreparedImages:
        """One image file, prepared (ImageError: one line on a bad file)."""
        self._check_engine()
        if self._processor is None:
            self._processor = load_image_processor(self.engine.path, self.min_pixels, self.max_pixels)
        prep = prepare_images(self._processor, [Path(path).expanduser().resolve()])
        self._prepared[prep.digest(0)] = prep
        return prep

    def attach(self, path: str) -> PreparedImages:
        """/image PATH: check the image now (a bad one is refused here, nothing else changes)."""
        prep = self.prepare(path)
        self.pending.append(prep)
        return prep

    @staticmethod
    def part(prep: PreparedImages) -> dict:
        return {"type": "image", "image": str(prep.paths[0]), "digest": prep.digest(0)}

    def content(self, text: str) -> str | list:
        """The next user message's content: text alone, or the pending images then the text."""
        if not self.pending:
            return text
        return [self.part(p) for p in self.pending] + [{"type": "text", "text": text}]

    def _image_of(self, part: dict) -> PreparedImages:
        digest = part.get("digest")
        if digest in self._prepared:
            return self._prepared[digest]
        path = part.get("image") or (part.get("image_url") or {}).get("url") if isinstance(part, dict) else None
        if not isinstance(path, str):
            raise InputError("an image in the conversation has no file path")
        prep = self.prepare(path.removeprefix("file://"))
        if digest and prep.digest(0) != digest:
            prep.notes.append(f"note: {path} changed since the conversation was saved; using the file as it is now")
        if digest:
            self._prepared[digest] = prep  # the saved reference resolves to the current content
        return prep

    def images_in(self, messages: list[dict]) -> list[PreparedImages]:
        """Every image part of `messages`, in order, prepared."""
        out = []
        for m in messages:
            content = m.get("content")
            if isinstance(content, list):
                out += [self._image_of(p) for p in content
                        if isinstance(p, dict) and (p.get("type") == "image" or "image" in p or "image_url" in p)]
        return out

    def prompt(self, messages: list[dict], ids: list[int]) -> tuple[list[int], ImagePrompt | None, list[PreparedImages]]:
        """Rendered ids of `messages` -> (ids with each pad widened, their ImagePrompt, the images)."""
        images = self.images_in(messages)
        if not images:
            return ids, None, []
        mm = self.engine.mm
        batch = combine_images(images)
        full = expand_image_pads(ids, batch.token_counts, mm)
        return full, ImagePrompt(mm, full, batch), images

    def expander(self, messages: list[dict]):
        """encode -> widened ids for renders of `messages` plus text-only turns (next_divergence)."""
        images = self.images_in(messages)
        counts = [c for p in images for c in p.token_counts]
        mm = self.engine.mm
        return lambda ids: expand_image_pads(ids, counts, mm) if counts else ids
