"""The Blender add-on in real Blender (the bpy wheel, headless); each case runs in a fresh process."""
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent

try:  # the bpy wheel exists for Python 3.11 only
    import importlib.util
    HAVE_BPY = importlib.util.find_spec("bpy") is not None
except ValueError:
    HAVE_BPY = False
pytestmark = pytest.mark.skipif(not HAVE_BPY, reason="needs the bpy wheel (pip install bpy==5.0.1, Python 3.11)")


def run_case(name, timeout=300, env=None, **arguments):
    """Run cases.NAME(**arguments) in a fresh bpy process; its result dict."""
    done = subprocess.run([sys.executable, str(HERE / "bpy_case.py"), name, json.dumps(arguments)],
                          capture_output=True, text=True, timeout=timeout, env=env)
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT: ")]
    assert done.returncode == 0 and lines, f"case {name} failed:\n{done.stdout[-4000:]}\n{done.stderr[-6000:]}"
    result = json.loads(lines[-1][len("RESULT: "):])
    result["_printed"] = [line for line in done.stdout.splitlines() if line.startswith("vse_style: ")]
    return result


def flat(rows):
    return [value for row in rows for value in row]


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_register_and_unregister_cleanly():
    result = run_case("register_cycle")
    assert all(result["registered"].values()), result["registered"]
    unregistered = result["unregistered"]
    assert not unregistered["panel"] and not unregistered["strip_props"] and not unregistered["scene_props"]
    assert unregistered["handlers"] == []
    assert result["again"]
    assert not result["torch"], "the add-on must never import torch"


def test_weights_sampled_per_frame_across_offset_and_trims(tmp_path):
    result = run_case("weight_sampling", tmp=str(tmp_path))
    assert result["frames"] == [22, 23, 24, 25, 26]  # start 20, trimmed 2 at the start, 3 at the end
    expected = [[0.0, 0.5, 0.0], [0.25, 0.5, 0.0], [0.5, 0.5, 0.0], [0.75, 0.5, 0.0], [1.0, 0.5, 0.0]]
    assert flat(result["weights"]) == pytest.approx(flat(expected))
    # the F-curve starts at -0.5 (linear to 0): clamped, never negative
    assert min(w for row in result["weights"] for w in row) >= 0.0
    assert result["moved_frames"] == [32, 33, 34, 35, 36]
    assert flat(result["moved_weights"]) == pytest.approx(flat(expected))


def test_removing_and_moving_slots_keeps_their_keys(tmp_path):
    result = run_case("slot_edit", tmp=str(tmp_path))
    removed = result["removed"]
    assert removed["slots"] == ["a.png", "c.png"]
    # slot c (keys 0.3 -> 0.6) is now index 1; nothing is left on index 2
    assert removed["curves"] == {"0": [[1.0, 0.1], [3.0, 0.2]], "1": [[1.0, 0.3], [3.0, 0.6]]}
    assert not removed["stale"]
    moved = result["moved"]
    assert moved["slots"] == ["c.png", "a.png"] and moved["active"] == 0
    assert moved["curves"] == {"0": [[1.0, 0.3], [3.0, 0.6]], "1": [[1.0, 0.1], [3.0, 0.2]]}
    assert result["added"] == {"slots": 3, "weight": 1.0, "active": 2}


def test_export_image_strip_reads_source_files_exactly(tmp_path):
    result = run_case("export_image", tmp=str(tmp_path))
    assert not result["rendered"]
    assert result["size"] == [40, 30] and result["small_size"] == [24, 18]
    assert result["names"] == ["frame_000001.png", "frame_000002.png", "frame_000003.png"]
    assert result["max_diff"] == [0, 0, 0]  # elements 1..3 (trims), pixels unchanged, no flip or scale
    assert result["small_shape"] == [18, 24, 3]
    assert result["view_transform_kept"] and result["scenes"] == 1
    assert result["temp_gone"] and result["undone_diff"] == [0, 0, 0]  # an undo mid-export does not break it
    assert result["stray_after_undo"] == [], "an undo to while it ran brought its temporary scene back"


def test_export_movie_strip_respects_offset_and_trims(tmp_path):
    result = run_case("export_movie", tmp=str(tmp_path))
    assert not result["rendered"]
    assert result["visible"] == [5, 6, 7, 8, 9]  # starts at 3, 2 trimmed at the start, 1 at the end
    assert result["size"] == [32, 24]
    assert result["matches"] == [2, 3, 4, 5, 6]
    assert max(result["mean_diff"]) < 4.0  # MJPG decoded by Blender vs OpenCV, then scaled


def test_export_of_a_strip_that_starts_before_frame_zero(tmp_path):
    result = run_case("export_before_frame_zero", tmp=str(tmp_path))
    assert result["frames"] == [-3, -2, -1, 0, 1, 2]
    assert result["source"] == {"rendered": False, "shown": [0, 1, 2, 3, 4, 5]}
    assert result["rendered"] == {"rendered": True, "shown": [0, 1, 2, 3, 4, 5]}


def test_export_real_footage_matches_what_the_sequencer_shows(tmp_path):
    from conftest import shared_path
    movie = shared_path("video", "cup.mp4")
    result = run_case("export_footage", tmp=str(tmp_path), movie=str(movie))
    assert not result["rendered"] and result["size"] == [640, 480]
    assert result["visible"] == [43, 44, 45, 46]  # starts at -7, 50 frames trimmed
    assert max(result["diffs"]) < 0.5, result["diffs"]  # the same frames, pixels unchanged
    assert min(result["neighbour_diffs"]) > 2 * max(result["diffs"])  # ... and not a neighbour


def test_export_renders_colour_scene_and_modified_strips(tmp_path):
    result = run_case("export_rendered", tmp=str(tmp_path))
    colour = result["colour"]
    assert colour["rendered"] and colour["count"] == 4 and colour["size"] == [32, 24]
    assert colour["percentage"] == 50, "a 32 px job of a 64 px canvas renders at 50 %, not the whole canvas"
    # 'Standard' view transform: the colour strip's sRGB value exactly, not the green strip above it
    assert colour["min"] == colour["max"] == [128, 64, 255]
    shot = result["shot"]
    assert shot["rendered"] and shot["min"] == shot["max"] == [255, 128, 0]
    graded = result["graded"]
    assert graded["rendered"] and graded["count"] == 4
    assert result["view_transform_kept"] and result["scenes_left"] == 0 and not result["cover_muted_after"]


def test_reimport_new_strip_above_source_with_keys_in_one_undo_step(tmp_path):
    result = run_case("reimport", tmp=str(tmp_path))
    assert result["result"] == ["FINISHED"], result["error"]
    assert result["type"] == "IMAGE" and result["name"] == "shot stylized"
    assert result["channel"] == 4  # channel 3 holds a strip during frames 14..18
    assert result["range"] == [11, 16]  # exactly the source's visible frames
    assert result["directory"] == "//stylized/shot/u1/"
    assert result["elements"] == [f"frame_{i:06d}.png" for i in range(1, 6)]
    assert result["scale"] == [2.0, 2.0]  # 20x15 frames shown where the 40x30 source is
    assert result["new_curves"] == result["source_curves"] and len(result["new_curves"]) == 2
    assert flat(result["weights_new"]) == pytest.approx(flat(result["weights_source"]))
    assert result["slots"] == ["//a.png", "//b.png"]
    assert result["source_after"] == result["source_before"]
    assert result["active"] == "shot stylized"
    assert result["after_undo"] == result["names_before"]
    assert result["after_redo"] == sorted(result["names_before"] + ["shot stylized"])


def test_reimport_with_missing_frames_says_so(tmp_path):
    result = run_case("reimport_missing_frames", tmp=str(tmp_path))
    assert result["result"] == [] and "nothing to import" in result["error"]
    assert "shot stylized" not in result["strips"]


def test_jobs_and_styles_persist_in_the_blend(tmp_path):
    result = run_case("jobs_persist", tmp=str(tmp_path))
    done, running = result["records"]
    assert done == {"uid": "u1", "job_id": "job1", "state": "done", "out_dir": "//stylized/shot/u1/",
                    "frames": [11, 5], "size": [20, 15]}
    assert running["state"] == "interrupted"  # its Blender session ended: offer Resume
    assert result["slots"] == ["//a.png", "//b.png"] and len(result["curves"]) == 2


def test_stylize_refuses_with_clear_messages(tmp_path):
    result = run_case("stylize_errors", tmp=str(tmp_path), free_port=free_port())
    m = result["messages"]
    assert "No active strip" in m["no_strip"]
    if result["version"] >= [5, 0]:  # the 4.2 wheel cannot make sound strips
        assert "Sound is not supported" in m["sound"]
    assert "Add at least one style" in m["no_styles"]
    assert "Style 1" in m["style_missing"] and "nowhere.jpg: no such file" in m["style_missing"]
    assert "notes.png: not an image file" in m["style_not_image"]  # issue 12.3: named before any export
    assert "Not added" in m["slot_add_missing"] and "no such file" in m["slot_add_missing"]
    assert "not an image file" in m["slot_add_not_image"] and result["slots_after_refused_adds"] == 1
    assert "Save the .blend file first" in m["unsaved"]
    assert "Engine Python" in m["no_python"] or "Python interpreter" in m["no_python"]
    if m.get("python_without_engine"):  # the second attempt says the same, without the first one's log lines
        first, second = m["python_without_engine"]
        assert "has no engine installed" in first and "make setup" in first and second == first
    assert "Engine not reachable" in m["engine_down"] and "Traceback" not in m["engine_down"]
    assert result["engine_down_seconds"] < 10
    assert "Engine not reachable" in result["test_connection"] and "Engine not reachable" in result["status"]
    # issue 12.3: the engine is reached before any frame is exported, and attempts that never reached
    # it leave no rows behind
    assert result["exported_frames"] == 0 and result["records"] == []
    assert result["temp_scenes"] == []


# -- with a real engine -------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def engine(tmp_path_factory):
    """A real engine on a free loopback port, always killed."""
    from engine_process import Engines
    engines = Engines(tmp_path_factory.mktemp("engine"))
    try:
        yield engines.start()
    finally:
        engines.close_all()


def kill_pid_file(path):
    """The engine an add-on started, if the case left it running (it should not)."""
    try:
        pid = int(Path(path).read_text())
    except (OSError, ValueError):
        return False
    try:
        os.kill(pid, 9)
    except ProcessLookupError:
        return False
    return True


def test_round_trip_with_a_local_engine(tmp_path):
    try:
        result = run_case("roundtrip_local", tmp=str(tmp_path), port=free_port())
    finally:
        leaked = kill_pid_file(tmp_path / "jobs" / "engine.pid")
    assert not leaked, "the add-on left its engine running after being disabled"
    assert result["op"] == ["FINISHED"], result["op_error"]
    assert "Engine 0.1.0 on cpu" in result["status"] and result["test_connection"][0] == ["FINISHED"]
    # the job the engine got: 3 frames at 48x36 (the source's size), weights sampled per frame
    assert result["size"] == [48, 36] and result["name"] == "shot"
    assert result["weights"] == [[1.0, 0.5], [0.5, 0.5], [0.0, 0.5]]
    assert result["options"]["iterations"] == 2 and result["options"]["mode"] == "temporal"
    assert result["options"]["style_weight"] == 200.0 and result["options"]["style_scale"] == 1.0
    assert result["options"]["init"] == "content"
    assert result["inputs_equal"] == [True, True, True]  # elements 1..3 of the trimmed source, unchanged
    # the new strip: first free channel above the source (2 is taken over frames 7..11), frames 6..8
    assert result["state"] == "done" and result["result"] == "shot stylized"
    assert result["channel"] == 3 and result["range"] == [6, 9]
    assert result["files"] == [f"frame_{i:06d}.png" for i in (1, 2, 3)] and result["shape"] == [36, 48, 3]
    assert result["new_curves"] == result["source_curves"] and list(result["source_curves"]) == ["0"]
    assert result["source"] == result["before"]
    assert result["temp_scenes"] == [] and not result["torch"]
    assert result["engine_pid"] is not None
    assert result["retested"][0] == ["FINISHED"] and result["pid_kept"], "a new timeout restarted the engine"
    # blender -b has no panel: progress comes as lines on stdout (issue 12.7)
    printed = result["_printed"]
    assert any("shot: Uploading" in line for line in printed) and any("shot: Frame 3/3" in line for line in printed)
    assert len(printed) < 40, "one line per step, not one per progress event"


def test_job_failed_by_the_engine_reports_its_reason(tmp_path):
    try:
        result = run_case("engine_failure", tmp=str(tmp_path), port=free_port())
    finally:
        kill_pid_file(tmp_path / "jobs" / "engine.pid")
    assert result["op"] == [] and result["state"] == "failed"
    assert "Job failed on the engine: RAFT weights not found" in result["op_error"]
    assert result["error"].startswith("Job failed on the engine: RAFT weights not found")
    assert "Traceback" not in result["op_error"] and "shot stylized" not in result["strips"]


def test_cancel_a_running_job(tmp_path, engine):
    result = run_case("cancel", tmp=str(tmp_path), address=engine.address)
    assert result["op"] == ["FINISHED"], result["op_error"]
    assert result["running"], "the job never started running"
    assert result["progress_text"].startswith("Frame ")
    assert result["cancelled"][0] == ["FINISHED"] and result["ended"]
    assert result["state"] == "cancelled" and result["engine_state"] == "cancelled"
    assert result["result"] == "" and "shot stylized" not in result["strips"]
    assert result["seconds"] < 30
    # Remove Job takes the row away and the job's files off the engine (issue 12.6, delete_job)
    assert result["removed"][0] == ["FINISHED"] and result["rows_after"] == 0
    assert result["after_remove"] == "unknown_job"


def test_estimate_before_starting_and_a_size_the_engine_cannot_take(tmp_path, engine):
    """Issue 12.4: no estimate, and a 12-megapixel strip failed after 16 s with an allocator message."""
    result = run_case("estimate_and_guard", tmp=str(tmp_path), address=engine.address)
    assert result["estimated"][0] == ["FINISHED"], result["estimated"][1]
    assert result["text"].startswith("About ") and "3 frames at 48x36" in result["text"] and "GB on cpu" in result["text"]
    assert result["stylized"][0] == ["FINISHED"] and " · ~" in result["summary"]  # the row keeps the estimate
    for refused in (result["too_big_estimate"], result["too_big"]):
        assert refused[0] == [] and "8192x6144 frames are more than this engine takes" in refused[1]
        assert "set the width to 3434 px or less" in refused[1]
    assert result["exported"] == 0 and result["rows_after"] == result["rows_before"]


def test_engine_requests_leave_the_interface_responsive(tmp_path, engine):
    """Estimate, Continue and Remove Job asked the engine on the main thread: Blender froze for as long as
    a Local engine took to start (up to 180 s) or an unreachable one took to time out."""
    result = run_case("engine_requests_off_the_main_thread", tmp=str(tmp_path), address=engine.address,
                      free_port=free_port())
    assert result["estimated"][0] == ["FINISHED"] and result["text_at_return"] == ""
    assert result["returned_after"] < 1.0 and result["answered"]
    assert result["messages"] == [["INFO", result["text"]]] and "3 frames at 48x36" in result["text"]
    assert result["unreachable"][0] == ["FINISHED"] and result["unreachable_returned_after"] < 1.0
    (level, message), = result["unreachable_messages"]
    assert level == "ERROR" and "Engine not reachable" in message


def test_frame_range_replace_previous_and_selected_strips(tmp_path, engine):
    """Issue 12.5: only whole strips, one at a time, each result stacked on a new channel."""
    result = run_case("scope", tmp=str(tmp_path), address=engine.address)
    assert result["ranged"][0] == ["FINISHED"], result["ranged"][1]
    count, first, placed, summary = result["ranged_job"]
    assert (count, first) == (2, 7) and placed[:2] == [7, 9], "only the frames inside the preview range"
    assert summary.startswith("Optimized · 48x36 · 2 it · ~")  # and the engine's estimate
    assert result["replaced"][0] == ["FINISHED"], result["replaced"][1]
    assert result["replacing_job"] == [6, 9, placed[2]], "on the channel of the result it replaces"
    assert result["old_result_left"] == "" and len(result["stylized_strips"]) == 1, result["stylized_strips"]
    assert result["both"][0] == ["FINISHED"], result["both"][1]
    assert result["both_jobs"] == [["second", "done", 3], ["shot", "done", 3]]


def test_cancelled_job_imports_its_finished_frames_then_continues(tmp_path, engine):
    """Issue 12.2: after a cancel, Re-import said "nothing to import" and Resume did nothing."""
    result = run_case("cancel_import_continue", tmp=str(tmp_path), address=engine.address)
    assert result["first_frame"] and result["cancelled"][0] == ["FINISHED"]
    k = result["finished_at_cancel"]
    assert result["cancelled_state"] == "cancelled" and 1 <= k < 3
    assert result["partial"][0] == ["FINISHED"], result["partial"][1]
    assert result["part"] == {"name": f"shot stylized ({k} of 3)", "range": [6, 6 + k]}
    assert result["continued"][0] == ["FINISHED"] and result["done"], result["continued"][1]
    assert result["state"] == "done" and result["range"] == [6, 9] and result["first_kept"]
    assert result["files"] == [f"frame_{i:06d}.png" for i in (1, 2, 3)]
    assert result["stylized_after_continue"] == [result["result"]], "the full result replaced the partial one"
    assert result["again"][0] == [] and "Re-import adds another copy" in result["again"][1]
    assert result["strips_unchanged"]


def test_result_lands_over_the_source_after_it_moved_and_was_renamed(tmp_path, engine):
    """Issue 12.1: the result went to the old frames (moved source) or lost its slots and keys (renamed)."""
    result = run_case("moved_and_renamed", tmp=str(tmp_path), address=engine.address)
    assert result["submitted"] and result["finished"] and result["state"] == "done", result["error"]
    assert result["twice"][0] == [] and "being stylized already" in result["twice"][1] and result["rows"] == 1
    assert result["range"] == result["source_range"] == [106, 109]
    assert result["channel"] > result["source_channel"] and result["record_source"] == "moved shot"
    assert result["slots"] == result["source_slots"] and len(result["slots"]) == 2
    assert result["new_curves"] == result["source_curves"] and 106.0 in [f for f, _ in result["new_curves"]["0"]]
    assert result["keys_differ"]


def test_frames_stay_together_when_the_blend_is_saved_elsewhere_mid_job(tmp_path, engine):
    """The frames' folder was '//stylized/...' resolved on every frame: Save As mid-job split the frames
    between two folders and left Re-import and Resume looking in the wrong one."""
    result = run_case("saved_elsewhere", tmp=str(tmp_path), address=engine.address)
    assert result["first_frame"] and result["done"] and result["finished_at_save"] < 3
    assert result["out_dir_after_save"].startswith("//../stylized/shot/")
    assert result["state"] == "done", result["error"]
    assert result["files_at_folder"] == [f"frame_{i:06d}.png" for i in (1, 2, 3)] and not result["beside_new_file"]
    assert result["same_folder"] and result["strip_folder_same"] and result["range"] == [6, 9]
    assert result["kept_after_copy"], "a saved copy leaves the open file's paths alone"
    assert result["copy_out_dir"].startswith("//../stylized/shot/") and result["copy_same_folder"]


def test_changed_engine_settings_leave_a_running_job_alone(tmp_path, engine):
    """Any change of the preferences (the timeout too) closed the client a running job read from (a
    ZMQError in the job) and, for a Local engine, restarted the engine."""
    result = run_case("settings_changed_mid_job", tmp=str(tmp_path), address=engine.address, free_port=free_port())
    assert result["same_client"] and result["timeout"] == 33.0
    assert result["running"] and result["elsewhere"][0] == [] and "not reachable" in result["elsewhere"][1]
    assert result["done"] and result["state"] == "done" and result["finished"] == 3, result["error"]
    assert result["old_client_closed"], "the replaced client is closed once its job ended"


def test_a_frame_lost_on_its_way_is_fetched_again(tmp_path, engine):
    result = run_case("frames_lost", tmp=str(tmp_path), address=engine.address)
    assert result["stylized"][0] == ["FINISHED"] and result["ended"]
    assert result["dropped"] == 2, "asked for once more after the job ended"
    assert result["state"] == "done" and result["imported"] == ""
    assert "1 frame never arrived (first: frame_000002.png): Re-import fetches them" in result["error"]
    assert result["files"] == ["frame_000001.png", "frame_000003.png"]
    assert result["reimported"][0] == ["FINISHED"] and result["reimport_ended"], result["reimported"][1]
    after = result["after"]
    assert after["state"] == "done" and after["error"] == "" and after["result"] == "shot stylized"
    assert after["files"] == [f"frame_{i:06d}.png" for i in (1, 2, 3)] and after["range"] == [6, 9]


def test_reattach_to_a_finished_job_after_reloading_the_blend(tmp_path, engine):
    result = run_case("reattach", tmp=str(tmp_path), address=engine.address)
    assert result["uploaded"] and result["state_after_reload"] == "interrupted"
    assert not result["busy_after_reload"]
    assert result["engine_state"] == "done"
    assert result["resumed"][0] == ["FINISHED"], result["resumed"][1]
    assert result["finished"]
    assert result["same_job"] and result["state"] == "done"
    assert result["files"] == [f"frame_{i:06d}.png" for i in (1, 2, 3)]
    assert result["channel"] == 3 and result["range"] == [6, 9]
    assert result["new_curves"] == result["source_curves"]
    assert result["after_undo"] == result["names_before"]


def test_resume_completes_an_interrupted_upload(tmp_path, engine):
    """A job whose upload stopped with Blender waited on the engine forever: Resume attached and showed
    'Attached to the engine' with nothing more to come."""
    result = run_case("upload_interrupted", tmp=str(tmp_path), address=engine.address)
    assert result["stalled"] and result["engine_state"] == "uploading" and result["shown"] == "interrupted", result
    assert result["resumed"][0] == ["FINISHED"] and result["finished"], result["resumed"][1]
    assert result["exported"] == 2, "only the frames the engine lacked are exported again"
    after = result["after"]
    assert after["state"] == "done" and after["result"] == "shot stylized", after["error"]
    assert after["files"] == [f"frame_{i:06d}.png" for i in (1, 2, 3)] and after["range"] == [6, 9]
    assert result["temp_scenes"] == []


def test_a_job_cancelled_mid_upload_ends_cancelled_and_continues(tmp_path, engine):
    result = run_case("cancelled_mid_upload", tmp=str(tmp_path), address=engine.address)
    assert result["stalled"] and result["cancelled"][0] == ["FINISHED"] and result["ended"], result
    assert result["state"] == "cancelled" and not result["error"], result
    assert result["continued"][0] == ["FINISHED"] and result["finished"], result["continued"][1]
    assert result["exported"] == 2, "only the frames the engine lacked are exported again"
    after = result["after"]
    assert after["state"] == "done" and after["result"] == "shot stylized", after["error"]
    assert after["files"] == [f"frame_{i:06d}.png" for i in (1, 2, 3)] and after["range"] == [6, 9]
    assert result["temp_scenes"] == []


def test_preview_shows_one_painted_frame_and_instant_runs_the_fast_mode(tmp_path, engine):
    result = run_case("preview_and_instant", tmp=str(tmp_path), address=engine.address)
    assert result["outside"][0] == [] and "not over 'shot'" in result["outside"][1]
    assert result["op"] == ["FINISHED"], result["op_error"]
    # what the engine was sent: the frame under the playhead, the weights its keys give there
    assert result["sent"][-1]["frame_equal"] and result["sent"][-1]["size"] == [48, 36]
    assert result["sent"][-1]["weights"] == [0.5, 0.5] and result["sent"][-1]["styles"] == ["s1.png", "s2.png"]
    assert result["text"].startswith("Frame 7") and not result["error"]
    assert result["image_size"] == [48, 36] and result["differs"] > 10  # a painting, not the frame
    assert result["icon_size"] == [48, 36] and ["label", result["text"]] in result["drawn"]
    assert (["icon", 8.0] in result["drawn"]) == (result["icon_id"] > 0)  # headless Blender makes no icons
    assert result["source"] == result["before"], "a preview leaves the strip alone"
    # Instant: mode fast at source width; the job runs the fast mode and comes back as a strip
    assert result["preset"] == {"mode": "fast", "width": 0, "name": "INSTANT", "after_edit": "CUSTOM",
                                "cpu_preview": [320, 50]}  # issue 12.4: a Preview sized for a CPU engine
    assert result["stylized"][0] == ["FINISHED"], result["stylized"][1]
    assert result["engine_options"]["mode"] == "fast"
    assert result["state"] == "done" and result["files"] == [f"frame_{i:06d}.png" for i in (1, 2, 3)]
    assert result["jobs_made"] == 0 and result["jobs_after_preview"] == 1  # the preview made no job
    assert ["prop", "iterations"] not in result["options_panel"] and ["prop", "mode"] in result["options_panel"]


def test_engine_version_mismatch_is_explained(tmp_path):
    result = run_case("version_mismatch", tmp=str(tmp_path), port=free_port())
    assert "Engine version mismatch" in result["test_connection"] and "protocol 1" in result["status"]
    assert "Engine version mismatch" in result["stylize"] and result["rows"] == 0  # no row for a job never sent


def test_built_zip_installs_and_its_operators_run(tmp_path, engine):
    """build_addon.py (linux-x64 only, wheels cached in build/wheels), then a headless install."""
    done = subprocess.run([sys.executable, str(ROOT / "build_addon.py"), "--platform", "linux-x64",
                           "--dist", str(tmp_path / "dist")], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    (zip_path,) = (tmp_path / "dist").glob("vse_style_transfer-*-linux_x64.zip")
    env = {**os.environ, "BLENDER_USER_RESOURCES": str(tmp_path / "user")}  # read when bpy is imported
    result = run_case("install_zip", env=env, zip_path=str(zip_path), address=engine.address)
    assert result["installed"][0] == ["FINISHED"], result["installed"][1]
    assert result["enabled"]
    assert result["test"][0] == ["FINISHED"] and "Engine 0.1.0 on cpu" in result["status"]
    assert result["bundled_client"], "the add-on must use its bundled copy of vse_style_shared"
    assert result["zmq_wheel"], "the pyzmq wheel was not installed from the zip"
    assert result["slot_added"][0] == ["FINISHED"] and result["slots"] == 1
    assert not result["torch"]


def test_panels_and_preferences_draw(tmp_path):
    draws = run_case("ui_draw", tmp=str(tmp_path))
    assert ["label", "Select a strip to stylize"] in draws["empty"]
    done = draws["done"]
    assert ["list", "VSE_STYLE_UL_slots", 2] in done and ["prop", "vse_style_w0"] in done
    assert ["operator", "vse_style.stylize"] in done and ["prop", "iterations"] in done
    # issue 12.8: what an editor thinks in comes first; iterations and the rest sit under Advanced
    front = [e for e in done if e[0] == "prop"]
    assert front.index(["prop", "style_strength"]) < front.index(["prop", "iterations"])
    assert ["prop", "brush_scale"] in done
    assert ["list", "VSE_STYLE_UL_jobs", 3] in done and ["operator", "vse_style.job_import"] in done
    assert ["label", "Job failed on the engine: boom"] in draws["failed"]
    assert ["operator", "vse_style.job_resume"] in draws["interrupted"]
    running = draws["running"]
    assert any(entry[0] == "progress" for entry in running) and ["operator", "vse_style.cancel"] in running
    assert ["operator", "vse_style.test_connection"] in draws["prefs"]
    assert ["prop", "python"] in draws["prefs"] and ["prop", "keys_dir"] in draws["prefs"]


def test_remote_engine_with_curve_keys(tmp_path):
    from engine_process import Engines
    keys = tmp_path / "keys"
    done = subprocess.run([sys.executable, "-m", "engine_server", "keygen", str(keys)], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    engines = Engines(tmp_path / "engines")
    try:
        engine = engines.start(extra=["--curve-dir", keys], client_args={
            "server_public_key": keys / "server.key", "client_keys": keys / "client.key_secret"})
        result = run_case("curve_keys", tmp=str(tmp_path), address=engine.address, keys=str(keys))
    finally:
        engines.close_all()
    assert "Engine 0.1.0 on cpu" in result["keys"]
    assert "Engine not reachable" in result["no_keys"]
    assert "Key file missing" in result["missing"]
