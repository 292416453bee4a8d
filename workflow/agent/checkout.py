"""``podagent checkout-run SPEC``: the repository at the wanted commit, its venv, torch, data.

Clones or fetches ``checkout.repo_url`` into ``remote.workdir``, resolves the branch, PR
or the pool's pinned SHA, checks it out without ever losing local work silently (local
changes, untracked files in the way, or commits the remote lacks stop it unless
``checkout.force_clean``), then makes the venv, runs ``checkout.install``, the torch
preflight and the data checks.
"""

import os
import re

from .checkout_data import ensure_data
from .checkout_venv import VENV_NAME, make_venv, preflight, venv_env, wants_cuda
from .fsutil import expand, makedirs, utcnow
from .gpus import cache_path as gpus_cache, keep_torch_count
from .step_runner import StepFailed, mask_url, run_main


def _norm_remote(url):
    url = (url or "").strip()
    if "://" not in url and not re.match(r"^[^/]+@[^/:]+:", url) and not re.match(r"^[^/:]+:[^/]", url):
        url = os.path.realpath(expand(url))
    url = url.rstrip("/")
    if url.endswith(".git"):
        url = url[:-4]
    return url.rstrip("/")


class Git:
    def __init__(self, r, workdir):
        self.r, self.workdir = r, workdir
        self.env = {"GIT_TERMINAL_PROMPT": "0", "GIT_ASKPASS": "/bin/true", "LC_ALL": "C"}

    def run(self, *args, **kw):
        return self.r.run(["git", "-C", self.workdir] + list(args), env=self.env, **kw)

    def out(self, *args):
        """stdout of a quiet git command, or None when it fails."""
        code, out, _ = self.r.quiet(["git", "-C", self.workdir] + list(args), env=self.env)
        return out if code == 0 else None

    def sha(self, ref):
        out = self.out("rev-parse", "--verify", "--quiet", ref + "^{commit}")
        return out.strip() if out else None


def _dirty(git):
    """``(tracked changes, untracked files)`` as porcelain paths."""
    out = git.out("status", "--porcelain=v1", "-z", "--untracked-files=normal") or ""
    tracked, untracked = [], []
    items = out.split("\0")
    i = 0
    while i < len(items):
        item = items[i]
        i += 1
        if not item:
            continue
        code, path = item[:2], item[3:]
        if code == "??":
            untracked.append(path)
        else:
            tracked.append("%s %s" % (code.strip(), path))
            if code[0] in "RC":
                i += 1  # the rename's source path
    return tracked, untracked


def _sync_repo(r, git, spec):
    workdir, url = git.workdir, spec["repo_url"]
    fresh = False
    if os.path.isdir(os.path.join(workdir, ".git")):
        origin = (git.out("remote", "get-url", "origin") or "").strip()
        if not origin:
            raise StepFailed("%s is a git checkout without an 'origin' remote" % workdir,
                             hint="remove it or point remote.workdir elsewhere")
        if _norm_remote(origin) != _norm_remote(url):
            raise StepFailed("%s is a clone of %s, not of checkout.repo_url %s"
                             % (workdir, mask_url(origin), mask_url(url)),
                             hint="point remote.workdir elsewhere, or remove that checkout on the pod")
        git.run("fetch", "--prune", "--tags", "origin", what="git fetch",
                hint="check checkout.repo_url and that the pod can reach it")
    else:
        if os.path.exists(workdir) and (not os.path.isdir(workdir) or os.listdir(workdir)):
            raise StepFailed("remote.workdir %s exists and is not a git checkout" % workdir,
                             hint="point remote.workdir at an empty or new directory")
        makedirs(os.path.dirname(workdir.rstrip("/")) or "/")
        r.run(["git", "clone", "--no-checkout", url, workdir], env=git.env, what="git clone",
              hint="check checkout.repo_url and that the pod can reach it (credentials come from the pod's git setup)")
        fresh = True
    _exclude_venv(workdir)
    return fresh


def _exclude_venv(workdir):
    """The checkout's venv is no local change: list it in ``.git/info/exclude``."""
    exclude = os.path.join(workdir, ".git", "info", "exclude")
    line = "/%s/" % VENV_NAME
    try:
        with open(exclude) as fh:
            if line in fh.read().split("\n"):
                return
    except (IOError, OSError):
        makedirs(os.path.dirname(exclude))
    with open(exclude, "a") as fh:
        fh.write("\n# podflow: the checkout's venv\n%s\n" % line)


def _target(r, git, spec):
    """``(sha, local branch name, description)`` of what to check out."""
    pr, branch = spec.get("pr"), spec.get("branch")
    if pr:
        ref = "refs/remotes/origin/pr/%d" % int(pr)
        git.run("fetch", "origin", "+refs/pull/%d/head:%s" % (int(pr), ref), what="git fetch of PR %d" % int(pr),
                hint="the remote must publish pull/%d/head (GitHub does; so do Gitea and Forgejo)" % int(pr))
        return git.sha(ref), "pr-%d" % int(pr), "PR %d" % int(pr)
    if not branch:
        head = (git.out("symbolic-ref", "--quiet", "refs/remotes/origin/HEAD") or "").strip()
        if not head:
            git.run("remote", "set-head", "origin", "--auto", what="git remote set-head", show=False)
            head = (git.out("symbolic-ref", "--quiet", "refs/remotes/origin/HEAD") or "").strip()
        if not head:
            raise StepFailed("cannot tell the default branch of %s" % mask_url(spec["repo_url"]),
                             hint="set checkout.branch")
        branch = head[len("refs/remotes/origin/"):]
        desc = "default branch %s" % branch
    else:
        desc = "branch %s" % branch
    sha = git.sha("refs/remotes/origin/" + branch)
    if not sha:
        names = (git.out("for-each-ref", "--format=%(refname:lstrip=3)", "refs/remotes/origin/") or "").split()
        names = [n for n in names if n != "HEAD" and not n.startswith("pr/")]
        raise StepFailed("branch %r is not on the remote %s" % (branch, mask_url(spec["repo_url"])),
                         hint="branches there: %s" % (", ".join(names[:20]) or "none"))
    return sha, branch, desc


def _pinned(r, git, pinned, desc):
    """The commit a pool's checkout resolved once (SPEC §8): every pod checks out that SHA,
    even when the branch moved on since; fetched by id when this clone lacks it."""
    r.say("the pool checks out %s (resolved once for every pod); %s moved on" % (pinned, desc))
    if not git.sha(pinned):
        git.run("fetch", "origin", pinned, what="git fetch of %s" % pinned[:12],
                hint="the remote must serve that commit (it was the branch's head when the pool's checkout began)")
    sha = git.sha(pinned)
    if sha != pinned:
        raise StepFailed("commit %s is not in %s" % (pinned, mask_url(git.r.spec["repo_url"])))
    return sha


def _checkout_tree(r, git, spec, sha, local, fresh):
    """Check out ``sha`` as branch ``local``; refuse to lose local work unless force_clean."""
    discarded = []
    if fresh:
        git.run("checkout", "-q", "-f", "-B", local, sha, what="git checkout")
        return discarded
    tracked, untracked = _dirty(git)
    in_target = set((git.out("ls-tree", "-r", "-z", "--name-only", sha) or "").split("\0"))
    # An untracked directory is listed once ("dir/"): it is in the way when the target has files under it.
    clobbered = [p for p in untracked
                 if p in in_target or (p.endswith("/") and any(t.startswith(p) for t in in_target))]
    lost = []
    old = git.sha("refs/heads/" + local)
    head = git.sha("HEAD")
    # Commits the remote does not have would be lost when the branch we reset (-B), or
    # a detached HEAD no other branch holds, moves away from them.
    for name, commit in (("branch " + local, old), ("HEAD", head if head != old else None)):
        if not commit or commit == sha or git.out("merge-base", "--is-ancestor", commit, sha) is not None:
            continue
        if (git.out("branch", "-r", "--contains", commit) or "").strip():
            continue
        holders = (git.out("for-each-ref", "--contains", commit, "--format=%(refname)", "refs/heads/") or "").split()
        if name == "HEAD" and [x for x in holders if x != "refs/heads/" + local]:
            continue
        lost.append("%s at %s has commits not on the remote" % (name, commit[:12]))
    if tracked or clobbered or lost:
        if not spec.get("force_clean"):
            shown = tracked[:10] + ["?? %s (would be overwritten)" % p for p in clobbered[:10]] + lost
            more = len(tracked) + len(clobbered) - len(tracked[:10]) - len(clobbered[:10])
            raise StepFailed("the checkout on the pod has local changes that checkout would discard: %s%s"
                             % ("; ".join(shown), " (and %d more)" % more if more > 0 else ""),
                             hint="commit and push them from the pod, or set checkout.force_clean: true "
                                  "to discard them (git reset --hard + git clean -fdx)")
    if spec.get("force_clean") and (tracked or untracked or lost):
        discarded = tracked + ["?? " + p for p in untracked] + lost
        r.milestone("checkout: force_clean: discarding %d local change(s)" % len(discarded))
        for line in discarded[:50]:
            r.say("  discarded: " + line)
        git.run("reset", "--hard", "-q", what="git reset --hard")
        git.run("clean", "-fdxq", "-e", "/%s/" % VENV_NAME, what="git clean -fdx")
    git.run("checkout", "-q", "-B", local, sha, what="git checkout")
    if untracked and not spec.get("force_clean"):
        r.say("kept %d untracked file(s) checkout does not touch (e.g. %s)" % (len(untracked), untracked[0]))
    return discarded


def do_checkout(r, result):
    spec = r.spec
    workdir = expand(spec["workdir"])
    git = Git(r, workdir)
    with r.step("fetch", "%s -> %s" % (mask_url(spec["repo_url"]), workdir)):
        fresh = _sync_repo(r, git, spec)
    with r.step("resolve", "which commit"):
        sha, local, desc = _target(r, git, spec)
        r.say("%s is %s" % (desc, sha))
        if spec.get("sha") and spec["sha"] != sha:
            sha = _pinned(r, git, spec["sha"], desc)
        expect = (spec.get("expect_sha") or "").lower()
        if expect and not sha.startswith(expect):
            raise StepFailed("checkout.expect_sha %s does not match %s, which is at %s" % (expect, desc, sha),
                             hint="update checkout.expect_sha, or check out the branch/PR that has it")
    with r.step("checkout", "%s at %s" % (desc, sha[:12])):
        discarded = _checkout_tree(r, git, spec, sha, local, fresh)
        head = git.sha("HEAD")
        if head != sha:
            raise StepFailed("after checkout HEAD is %s, not %s" % (head, sha))
    with r.step("venv", os.path.join(workdir, VENV_NAME)):
        venv, python, created = make_venv(r, spec, workdir)
    if spec.get("install"):
        with r.step("install", spec["install"]):
            r.run(["bash", "-c", spec["install"]], cwd=workdir, env=venv_env(venv), what="checkout.install",
                  hint="fix checkout.install (it runs in the checkout with the venv's bin/ first on PATH)")
    torch_info = None
    if spec.get("require_torch") or wants_cuda(spec):
        with r.step("preflight", "import torch%s" % (" and CUDA" if wants_cuda(spec) else "")):
            torch_info = preflight(r, spec, venv, python)
        # what the sweep's probe would import torch again to learn (GPU ids as torch counts them)
        keep_torch_count(os.path.join(venv, "bin", "python"), gpus_cache(expand(spec["outputs_dir"])),
                         [str(i) for i in range(torch_info.get("devices") or 0 if torch_info.get("cuda") else 0)])
    data = {"downloaded": False}
    if spec.get("data_checks"):
        with r.step("data", "%d check(s)" % len(spec["data_checks"])):
            data = ensure_data(r, spec, venv)
    result.update(sha=sha, branch=None if spec.get("pr") else local, pr=spec.get("pr"), workdir=workdir,
                  venv=venv, venv_created=created, discarded=discarded, torch=torch_info,
                  data_downloaded=data["downloaded"])
    fields = {
        "checkout_sha": sha,
        "checkout_branch": None if spec.get("pr") else local,
        "checkout_pr": spec.get("pr"),
        "checkout_repo_url": mask_url(spec["repo_url"]),
        "checkout_workdir": workdir,
        "checkout_venv": venv,
        "checkout_at": utcnow(),
    }
    if discarded:
        fields["checkout_force_cleaned"] = {"at": utcnow(), "discarded": discarded[:50], "count": len(discarded)}
    return fields


def checkout_main(argv):
    return run_main(argv, "checkout", do_checkout)
