"""`generate --image` and chat `/image` on the tiny vision model (tests/vision_fixtures.py) with the
tiny tokenizer: placeholders per image, greedy ids equal to transformers' generate, bad images as
one line (the chat goes on), /save and /load keeping image references, the stats line's tokens."""

import io
import json
import shutil
import sys

import pytest
import torch
import yaml

from helpers import run_cli
from hetero_qwen.tiny_tokenizer import tiny_special_token_ids, write_tiny_tokenizer
from vision_fixtures import shared_vision_fixture

PROFILE = {"cpu": {"ram": "1GiB", "threads": 2, "reserve": "0MiB"}, "context": 256}


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    """The vision fixture with the tiny tokenizer, its image token ids moved to the tokenizer's."""
    fx = shared_vision_fixture(tmp_path_factory)
    d = tmp_path_factory.mktemp("vision-chat") / "model"
    shutil.copytree(fx.path, d)
    raw = json.loads((d / "config.json").read_text())
    write_tiny_tokenizer(d, raw["text_config"]["vocab_size"])
    special = tiny_special_token_ids(raw["text_config"]["vocab_size"])
    for key, text in (("image_token_id", "<|image_pad|>"), ("video_token_id", "<|video_pad|>"),
                      ("vision_start_token_id", "<|vision_start|>"), ("vision_end_token_id", "<|vision_end|>")):
        raw[key] = special[text]
    (d / "config.json").write_text(json.dumps(raw, indent=2))
    return d, fx


@pytest.fixture
def profile(tmp_path):
    p = tmp_path / "cpu.yaml"
    p.write_text(yaml.safe_dump(PROFILE))
    return p


def hf_greedy(model_dir, ids, paths, n):
    from transformers import AutoImageProcessor, Qwen3_5ForConditionalGeneration
    from PIL import Image
    hf = Qwen3_5ForConditionalGeneration.from_pretrained(model_dir, dtype=torch.float32).eval()
    proc = AutoImageProcessor.from_pretrained(model_dir)
    inputs = proc(images=[Image.open(p).convert("RGB") for p in paths], return_tensors="pt")
    input_ids = torch.tensor([ids])
    with torch.no_grad():
        out = hf.generate(input_ids=input_ids, pixel_values=inputs["pixel_values"],
                          image_grid_thw=inputs["image_grid_thw"],
                          mm_token_type_ids=(input_ids == hf.config.image_token_id).int(),
                          max_new_tokens=n, min_new_tokens=n, do_sample=False, pad_token_id=0, eos_token_id=None)
    return out[0, len(ids):].tolist()


@pytest.mark.parametrize("names", [["a.png"], ["a.png", "b.png"]])
def test_generate_with_images_equals_transformers(model, profile, capsys, names):
    d, fx = model
    images = [a for n in names for a in ("--image", fx.images[n])]
    code, out, err = run_cli(["generate", "--model", d, "--profile", profile, "--chat", "--no-think",
                              "--prompt", "What is in the picture?", *images, "-n", "8", "--json"], capsys)
    assert code == 0, err
    result = json.loads(out)
    pad = json.loads((d / "config.json").read_text())["image_token_id"]
    counts = {"a.png": 8, "b.png": 12}   # (4 x 8 and 8 x 6 patches) / merge 2 x 2
    assert result["prompt_ids"].count(pad) == sum(counts[n] for n in names)
    assert result["stats"]["image_tokens"] == sum(counts[n] for n in names)
    assert result["ids"] == hf_greedy(d, result["prompt_ids"], [fx.images[n] for n in names], 8)


def test_generate_image_errors_are_one_line(model, profile, capsys, tmp_path):
    d, fx = model
    base = ["generate", "--model", d, "--profile", profile, "--prompt", "hi", "-n", "2"]
    text = tmp_path / "notes.png"
    text.write_text("not a picture")
    cut = tmp_path / "cut.png"
    cut.write_bytes(fx.images["b.png"].read_bytes()[:120])
    small = tmp_path / "small.yaml"
    small.write_text(yaml.safe_dump({**PROFILE, "context": 24}))
    cases = [
        (["--image", fx.images["a.png"]], "error: --image needs --chat"),
        (["--chat", "--image", text], f"error: {text}: not an image"),
        (["--chat", "--image", cut], f"error: {cut}: truncated or corrupt image"),
        (["--chat", "--image", tmp_path / "none.png"], "no such image file"),
        (["--chat", "--image", fx.images["a.png"], "--text-only"], "error: --image and --text-only exclude"),
    ]
    for extra, message in cases:
        code, out, err = run_cli(base + [str(a) for a in extra], capsys)
        assert code == 2 and message in err and "Traceback" not in err and err.count("\n") == 1, (extra, err)
    code, out, err = run_cli(["generate", "--model", d, "--profile", small, "--prompt", "hi", "-n", "2", "--chat",
                              "--image", fx.images["a.png"]], capsys)
    assert code == 2 and "more than the context (24)" in err


def test_generate_resizes_a_big_image_with_one_note(model, profile, capsys, tmp_path):
    from PIL import Image
    d, _ = model
    big = tmp_path / "big.png"
    Image.new("RGB", (200, 160), (30, 90, 200)).save(big)   # 32000 pixels > the 4096 budget
    code, out, err = run_cli(["generate", "--model", d, "--profile", profile, "--chat", "--prompt", "hi",
                              "--image", big, "-n", "2", "--json"], capsys)
    assert code == 0, err
    notes = [line for line in err.splitlines() if "above the image pixel budget" in line]
    assert len(notes) == 1 and "resized to" in notes[0]
    code, out, err = run_cli(["generate", "--model", d, "--profile", profile, "--chat", "--prompt", "hi",
                              "--image", big, "-n", "2", "--json", "--image-max-pixels", "100000"], capsys)
    assert code == 0 and "above the image pixel budget" not in err


def test_text_only_generate_and_plan(model, profile, capsys):
    d, _ = model
    code, out, err = run_cli(["generate", "--model", d, "--profile", profile, "--prompt", "hi", "-n", "2",
                              "--text-only", "--json"], capsys)
    assert code == 0, err
    code, out, err = run_cli(["plan", "--model", d, "--profile", profile], capsys)
    assert code == 0 and "vision tower c" in out
    code, out, err = run_cli(["plan", "--model", d, "--profile", profile, "--text-only"], capsys)
    assert code == 0 and "vision tower" not in out


def chat(monkeypatch, capsys, d, profile, lines, *extra):
    monkeypatch.setattr(sys, "stdin", io.StringIO("\n".join(lines) + "\n"))
    return run_cli(["chat", "--model", d, "--profile", profile, "--no-think", "--max-new-tokens", "3",
                    "--seed", "1", *extra], capsys)


def test_chat_image_command_save_and_load(model, profile, capsys, monkeypatch, tmp_path):
    d, fx = model
    bad = tmp_path / "bad.png"
    bad.write_text("nope")
    saved = tmp_path / "chat.json"
    code, out, err = chat(monkeypatch, capsys, d, profile, [
        f"/image {fx.images['a.png']}", "What is this?",
        f"/image {bad}", f"/image {tmp_path / 'missing.png'}",   # refused; the chat goes on
        f"/image {fx.images['b.png']}", "/image", "And this one?", f"/save {saved}"])
    assert code == 0 and "Traceback" not in err
    assert f"error: {bad}: not an image" in err and "no such image file" in err
    assert "image a.png attached to the next message (64x32 pixels, 8 tokens)" in err
    assert "1 image attached to the next message" in err
    messages = json.loads(saved.read_text())
    assert [m["role"] for m in messages] == ["user", "assistant", "user", "assistant"]
    first, second = messages[0]["content"], messages[2]["content"]
    assert first[0]["type"] == "image" and first[0]["image"] == str(fx.images["a.png"].resolve())
    assert len(first[0]["digest"]) == 64 and first[1] == {"type": "text", "text": "What is this?"}
    assert second[0]["image"] == str(fx.images["b.png"].resolve()) and len(second) == 2
    code, out2, err = chat(monkeypatch, capsys, d, profile, [f"/load {saved}", "Compare them."])
    assert code == 0 and "loaded 4 messages with 2 images" in err and out2.strip()


def test_chat_load_with_a_changed_image_notes_it(model, profile, capsys, monkeypatch, tmp_path):
    from PIL import Image
    d, fx = model
    img = tmp_path / "x.png"
    shutil.copy(fx.images["a.png"], img)
    saved = tmp_path / "c.json"
    code, _, err = chat(monkeypatch, capsys, d, profile, [f"/image {img}", "hi", f"/save {saved}"])
    assert code == 0, err
    im = Image.open(img).convert("RGB")
    im.putpixel((0, 0), (255, 255, 255))
    im.save(img)
    code, _, err = chat(monkeypatch, capsys, d, profile, [f"/load {saved}", "again"])
    assert code == 0 and "changed since the conversation was saved" in err


def test_chat_on_a_text_model_refuses_images(tiny_dir, profile, capsys, monkeypatch):
    code, out, err = chat(monkeypatch, capsys, tiny_dir, profile, ["/image x.png", "hello"])
    assert code == 0 and "error: this checkpoint has no vision tower" in err and out.strip()


def test_stats_line_shows_image_tokens(model):
    import hetero_qwen
    from hetero_qwen.chat.commands import reply_stats
    from hetero_qwen.chat.conversation import ChatSettings, Conversation
    d, fx = model
    eng = hetero_qwen.load(d, profile=PROFILE, quiet=True)
    conv = Conversation(eng, ChatSettings(think=False, max_new_tokens=2, seed=0))
    conv.images.attach(fx.images["a.png"])
    conv.images.attach(fx.images["b.png"])
    turn = conv.begin("hi")
    list(turn)
    conv.end(turn)
    assert "· 2 images: 20 tokens ·" in reply_stats(turn)
    turn = conv.begin("more")   # the images stay in the history; none new on this message
    assert "image" not in reply_stats(turn) and turn.sync.reused > 20
