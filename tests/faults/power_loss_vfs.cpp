// The power-loss VFS (see power_loss_vfs.hpp for the model it promises). Each named file gets an
// Image: its content as every reader sees it, and the queue of writes and truncates not synced
// yet. Images are shared by every handle on one path and outlive the handles (closing a file
// does not flush the OS cache), until restart() forgets them. One mutex guards the whole state;
// calls that only pass through (locks, shared memory) read the atomic `dead` flag instead.
#include "faults/power_loss_vfs.hpp"

#include <fcntl.h>
#include <sqlite3.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cstring>
#include <map>
#include <mutex>
#include <random>
#include <set>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

namespace pylon::test {

namespace {

constexpr const char* kVfsName = "pylon_power_loss";
// The tear granularity, and the sector size the VFS reports, so SQLite and the model agree.
constexpr sqlite3_int64 kSector = 512;

struct Pending {
  bool is_truncate = false;
  sqlite3_int64 offset = 0;  // a truncate's new size
  std::string bytes;
};

struct Image {
  std::string content;           // what reads see: the disk plus the unsynced queue
  std::vector<Pending> pending;  // since the last xSync of this path
};

struct Handle;

}  // namespace

struct PowerLossVfs::State {
  sqlite3_vfs vfs{};
  sqlite3_vfs* real_vfs = nullptr;
  std::uint32_t tear_seed = 1;
  std::uint32_t restarts = 0;

  mutable std::mutex mutex;
  std::atomic<bool> dead{false};
  std::map<std::string, std::shared_ptr<Image>> images;
  std::set<std::string> shm_paths;  // the -shm of every main database opened
  PowerCut cut = PowerCut::kDropUnsynced;
  std::uint64_t calls = 0;
  std::uint64_t armed_at = 0;
  std::size_t open_files = 0;
  std::size_t torn_applied = 0;
  std::size_t torn_dropped = 0;

  // Counts one xWrite/xTruncate/xSync; true when the power goes at this very call.
  bool count_call_locked() {
    ++calls;
    if (armed_at != 0 && calls == armed_at) {
      dead = true;
      return true;
    }
    return false;
  }
};

namespace {

using State = PowerLossVfs::State;

// The sqlite3_file SQLite allocates for us (vfs.szOsFile bytes): its methods, then our handle.
struct WrappedFile {
  sqlite3_file base;
  Handle* handle;
};

// What a wrapped file owns: the wrapped VFS's file object, and the image of a named file (null
// for a temporary file, which passes through).
struct Handle {
  State* state = nullptr;
  std::vector<std::max_align_t> storage;  // the wrapped VFS's sqlite3_file, suitably aligned
  std::shared_ptr<Image> image;

  sqlite3_file* real() {
    // NOLINTNEXTLINE(cppcoreguidelines-pro-type-reinterpret-cast): VFS objects are C structs
    return reinterpret_cast<sqlite3_file*>(storage.data());
  }
  const sqlite3_io_methods& methods() { return *real()->pMethods; }
};

Handle& handle_of(sqlite3_file* file) {
  // NOLINTNEXTLINE(cppcoreguidelines-pro-type-reinterpret-cast): base is the first member
  return *reinterpret_cast<WrappedFile*>(file)->handle;
}

State& state_of(sqlite3_vfs* vfs) { return *static_cast<State*>(vfs->pAppData); }

// ------------------------------------------------------------------------------------------------
// File methods
// ------------------------------------------------------------------------------------------------

int file_close(sqlite3_file* file) {
  Handle* handle = &handle_of(file);
  // Always closed for real, even without power: the descriptor and its POSIX locks must go.
  const int result = handle->methods().xClose(handle->real());
  {
    State& state = *handle->state;
    const std::lock_guard<std::mutex> lock(state.mutex);
    --state.open_files;
  }
  delete handle;  // NOLINT(cppcoreguidelines-owning-memory): allocated by vfs_open for SQLite
  return result;
}

int file_read(sqlite3_file* file, void* buffer, int amount, sqlite3_int64 offset) {
  Handle& handle = handle_of(file);
  if (handle.state->dead) return SQLITE_IOERR_READ;
  if (!handle.image) return handle.methods().xRead(handle.real(), buffer, amount, offset);
  const std::lock_guard<std::mutex> lock(handle.state->mutex);
  if (handle.state->dead) return SQLITE_IOERR_READ;
  const std::string& content = handle.image->content;
  const auto want = static_cast<std::size_t>(amount);
  const auto from = static_cast<std::size_t>(offset);
  const std::size_t have = from >= content.size() ? 0 : std::min(want, content.size() - from);
  auto* out = static_cast<char*>(buffer);
  if (have > 0) content.copy(out, have, from);
  if (have < want) {
    // SQLite requires the rest of the buffer zeroed on a short read.
    std::memset(out + have, 0, want - have);  // NOLINT(*-pointer-arithmetic): C buffer + length
    return SQLITE_IOERR_SHORT_READ;
  }
  return SQLITE_OK;
}

int file_write(sqlite3_file* file, const void* buffer, int amount, sqlite3_int64 offset) {
  Handle& handle = handle_of(file);
  if (handle.state->dead) return SQLITE_IOERR_WRITE;
  if (!handle.image) return handle.methods().xWrite(handle.real(), buffer, amount, offset);
  const std::lock_guard<std::mutex> lock(handle.state->mutex);
  if (handle.state->dead || handle.state->count_call_locked()) return SQLITE_IOERR_WRITE;
  std::string& content = handle.image->content;
  const auto at = static_cast<std::size_t>(offset);
  const auto size = static_cast<std::size_t>(amount);
  std::string bytes(static_cast<const char*>(buffer), size);
  if (content.size() < at + size) content.resize(at + size, '\0');
  content.replace(at, size, bytes);
  handle.image->pending.push_back(Pending{false, offset, std::move(bytes)});
  return SQLITE_OK;
}

int file_truncate(sqlite3_file* file, sqlite3_int64 size) {
  Handle& handle = handle_of(file);
  if (handle.state->dead) return SQLITE_IOERR_TRUNCATE;
  if (!handle.image) return handle.methods().xTruncate(handle.real(), size);
  const std::lock_guard<std::mutex> lock(handle.state->mutex);
  if (handle.state->dead || handle.state->count_call_locked()) return SQLITE_IOERR_TRUNCATE;
  handle.image->content.resize(static_cast<std::size_t>(size), '\0');
  handle.image->pending.push_back(Pending{true, size, {}});
  return SQLITE_OK;
}

// The only way anything reaches the real file: the queue, in order, then a real fsync.
int file_sync(sqlite3_file* file, int flags) {
  Handle& handle = handle_of(file);
  if (handle.state->dead) return SQLITE_IOERR_FSYNC;
  if (!handle.image) return handle.methods().xSync(handle.real(), flags);
  const std::lock_guard<std::mutex> lock(handle.state->mutex);
  if (handle.state->dead || handle.state->count_call_locked()) return SQLITE_IOERR_FSYNC;
  for (const Pending& pending : handle.image->pending) {
    const int result =
        pending.is_truncate
            ? handle.methods().xTruncate(handle.real(), pending.offset)
            : handle.methods().xWrite(handle.real(), pending.bytes.data(),
                                      static_cast<int>(pending.bytes.size()), pending.offset);
    if (result != SQLITE_OK) return result;
  }
  const int result = handle.methods().xSync(handle.real(), flags);
  if (result == SQLITE_OK) handle.image->pending.clear();
  return result;
}

int file_size(sqlite3_file* file, sqlite3_int64* size) {
  Handle& handle = handle_of(file);
  if (handle.state->dead) return SQLITE_IOERR_FSTAT;
  if (!handle.image) return handle.methods().xFileSize(handle.real(), size);
  const std::lock_guard<std::mutex> lock(handle.state->mutex);
  *size = static_cast<sqlite3_int64>(handle.image->content.size());
  return SQLITE_OK;
}

int file_lock(sqlite3_file* file, int level) {
  Handle& handle = handle_of(file);
  if (handle.state->dead) return SQLITE_IOERR_LOCK;
  return handle.methods().xLock(handle.real(), level);
}

// Unlocking always goes through, so a dead connection can still let go of the file.
int file_unlock(sqlite3_file* file, int level) {
  Handle& handle = handle_of(file);
  return handle.methods().xUnlock(handle.real(), level);
}

int file_check_reserved_lock(sqlite3_file* file, int* result) {
  Handle& handle = handle_of(file);
  if (handle.state->dead) return SQLITE_IOERR_CHECKRESERVEDLOCK;
  return handle.methods().xCheckReservedLock(handle.real(), result);
}

int file_control(sqlite3_file* file, int op, void* argument) {
  Handle& handle = handle_of(file);
  // The unix VFS answers these by growing the real file itself, behind the image's back. They
  // are hints: declining them changes no result.
  if (handle.image && (op == SQLITE_FCNTL_SIZE_HINT || op == SQLITE_FCNTL_CHUNK_SIZE)) {
    return SQLITE_OK;
  }
  return handle.methods().xFileControl(handle.real(), op, argument);
}

int file_sector_size(sqlite3_file* file) {
  Handle& handle = handle_of(file);
  if (!handle.image) return handle.methods().xSectorSize(handle.real());
  return static_cast<int>(kSector);
}

int file_device_characteristics(sqlite3_file* file) {
  Handle& handle = handle_of(file);
  return handle.methods().xDeviceCharacteristics(handle.real());
}

// Shared memory (-shm) is the wrapped VFS's own mmap: RAM shared between connections. It passes
// through; restart() garbles the file behind it, since after a reboot it holds nothing trusted.
int file_shm_map(sqlite3_file* file, int page, int page_size, int extend, void volatile** out) {
  Handle& handle = handle_of(file);
  if (handle.state->dead) return SQLITE_IOERR_SHMMAP;
  return handle.methods().xShmMap(handle.real(), page, page_size, extend, out);
}

int file_shm_lock(sqlite3_file* file, int offset, int count, int flags) {
  Handle& handle = handle_of(file);
  if (handle.state->dead && (flags & SQLITE_SHM_UNLOCK) == 0) return SQLITE_IOERR_SHMLOCK;
  return handle.methods().xShmLock(handle.real(), offset, count, flags);
}

void file_shm_barrier(sqlite3_file* file) {
  Handle& handle = handle_of(file);
  handle.methods().xShmBarrier(handle.real());
}

int file_shm_unmap(sqlite3_file* file, int delete_flag) {
  Handle& handle = handle_of(file);
  return handle.methods().xShmUnmap(handle.real(), delete_flag);
}

// Version 2: no xFetch/xUnfetch, so the pager never memory-maps the database and every read
// goes through file_read (and sees the image).
const sqlite3_io_methods kFileMethods = {
    2,
    file_close,
    file_read,
    file_write,
    file_truncate,
    file_sync,
    file_size,
    file_lock,
    file_unlock,
    file_check_reserved_lock,
    file_control,
    file_sector_size,
    file_device_characteristics,
    file_shm_map,
    file_shm_lock,
    file_shm_barrier,
    file_shm_unmap,
    nullptr,
    nullptr,
};

// ------------------------------------------------------------------------------------------------
// VFS methods
// ------------------------------------------------------------------------------------------------

// The whole real file, read through the wrapped VFS, as the first image of a path.
int load_image(Handle& handle, Image* image) {
  sqlite3_int64 size = 0;
  int result = handle.methods().xFileSize(handle.real(), &size);
  if (result != SQLITE_OK) return result;
  image->content.assign(static_cast<std::size_t>(size), '\0');
  if (size == 0) return SQLITE_OK;
  result = handle.methods().xRead(handle.real(), image->content.data(), static_cast<int>(size), 0);
  return result;
}

int vfs_open(sqlite3_vfs* vfs, sqlite3_filename name, sqlite3_file* file, int flags,
             int* out_flags) {
  State& state = state_of(vfs);
  // NOLINTNEXTLINE(cppcoreguidelines-pro-type-reinterpret-cast): base is the first member
  auto* wrapped = reinterpret_cast<WrappedFile*>(file);
  wrapped->base.pMethods = nullptr;  // so SQLite does not call xClose if the open fails
  if (state.dead) return SQLITE_CANTOPEN;

  auto handle = std::make_unique<Handle>();
  handle->state = &state;
  const auto slots =
      (static_cast<std::size_t>(state.real_vfs->szOsFile) + sizeof(std::max_align_t) - 1) /
      sizeof(std::max_align_t);
  handle->storage.assign(slots, std::max_align_t{});
  const int opened = state.real_vfs->xOpen(state.real_vfs, name, handle->real(), flags, out_flags);
  if (opened != SQLITE_OK) {
    if (handle->real()->pMethods != nullptr) handle->methods().xClose(handle->real());
    return opened;
  }
  {
    const std::lock_guard<std::mutex> lock(state.mutex);
    if (name != nullptr) {
      const std::string path = name;
      std::shared_ptr<Image>& image = state.images[path];
      if (!image) {
        auto fresh = std::make_shared<Image>();
        const int loaded = load_image(*handle, fresh.get());
        if (loaded != SQLITE_OK) {
          state.images.erase(path);
          handle->methods().xClose(handle->real());
          return loaded;
        }
        image = std::move(fresh);
      }
      handle->image = image;
      if ((flags & SQLITE_OPEN_MAIN_DB) != 0) state.shm_paths.insert(path + "-shm");
    }
    ++state.open_files;
  }
  wrapped->handle = handle.release();
  wrapped->base.pMethods = &kFileMethods;
  return SQLITE_OK;
}

int vfs_delete(sqlite3_vfs* vfs, const char* name, int sync_dir) {
  State& state = state_of(vfs);
  if (state.dead) return SQLITE_IOERR_DELETE;
  {
    const std::lock_guard<std::mutex> lock(state.mutex);
    state.images.erase(name);
  }
  return state.real_vfs->xDelete(state.real_vfs, name, sync_dir);
}

int vfs_access(sqlite3_vfs* vfs, const char* name, int flags, int* result) {
  State& state = state_of(vfs);
  if (state.dead) return SQLITE_IOERR_ACCESS;
  if (flags == SQLITE_ACCESS_EXISTS) {
    // The unix VFS counts an empty file as missing; judge by the image, which may hold unsynced
    // WAL frames while the real file is still empty.
    const std::lock_guard<std::mutex> lock(state.mutex);
    const auto found = state.images.find(name);
    if (found != state.images.end()) {
      *result = found->second->content.empty() ? 0 : 1;
      return SQLITE_OK;
    }
  }
  return state.real_vfs->xAccess(state.real_vfs, name, flags, result);
}

int vfs_full_pathname(sqlite3_vfs* vfs, const char* name, int size, char* out) {
  State& state = state_of(vfs);
  return state.real_vfs->xFullPathname(state.real_vfs, name, size, out);
}

void* vfs_dl_open(sqlite3_vfs* vfs, const char* name) {
  State& state = state_of(vfs);
  return state.real_vfs->xDlOpen(state.real_vfs, name);
}

void vfs_dl_error(sqlite3_vfs* vfs, int size, char* out) {
  State& state = state_of(vfs);
  state.real_vfs->xDlError(state.real_vfs, size, out);
}

void (*vfs_dl_sym(sqlite3_vfs* vfs, void* library, const char* symbol))() {
  State& state = state_of(vfs);
  return state.real_vfs->xDlSym(state.real_vfs, library, symbol);
}

void vfs_dl_close(sqlite3_vfs* vfs, void* library) {
  State& state = state_of(vfs);
  state.real_vfs->xDlClose(state.real_vfs, library);
}

int vfs_randomness(sqlite3_vfs* vfs, int size, char* out) {
  State& state = state_of(vfs);
  return state.real_vfs->xRandomness(state.real_vfs, size, out);
}

int vfs_sleep(sqlite3_vfs* vfs, int microseconds) {
  State& state = state_of(vfs);
  return state.real_vfs->xSleep(state.real_vfs, microseconds);
}

int vfs_current_time(sqlite3_vfs* vfs, double* now) {
  State& state = state_of(vfs);
  return state.real_vfs->xCurrentTime(state.real_vfs, now);
}

int vfs_get_last_error(sqlite3_vfs* vfs, int size, char* out) {
  State& state = state_of(vfs);
  return state.real_vfs->xGetLastError(state.real_vfs, size, out);
}

int vfs_current_time_int64(sqlite3_vfs* vfs, sqlite3_int64* now) {
  State& state = state_of(vfs);
  return state.real_vfs->xCurrentTimeInt64(state.real_vfs, now);
}

// What reaches the disk of `image`'s queue when the power goes during a torn write: each piece of
// a write that lies within one 512-byte sector, and each truncate, with probability 1/2, in
// order. Bytes no write touched stay as they were.
void tear_into(const std::string& path, const Image& image, std::mt19937* random,
               std::size_t* applied, std::size_t* dropped) {
  // NOLINTNEXTLINE(cppcoreguidelines-pro-type-vararg): open(2) is variadic
  const int fd = ::open(path.c_str(), O_WRONLY | O_CLOEXEC);
  if (fd < 0) return;  // deleted since: creation and deletion are durable at once
  for (const Pending& pending : image.pending) {
    if (pending.is_truncate) {
      if (((*random)() & 1U) != 0) {
        if (::ftruncate(fd, pending.offset) != 0) {
          ::close(fd);
          throw std::runtime_error("PowerLossVfs: ftruncate " + path + ": " + std::strerror(errno));
        }
        ++*applied;
      } else {
        ++*dropped;
      }
      continue;
    }
    sqlite3_int64 at = pending.offset;
    const sqlite3_int64 end = pending.offset + static_cast<sqlite3_int64>(pending.bytes.size());
    while (at < end) {
      const sqlite3_int64 piece_end = std::min(end, (at / kSector + 1) * kSector);
      if (((*random)() & 1U) != 0) {
        const auto length = static_cast<std::size_t>(piece_end - at);
        const char* bytes = pending.bytes.data() + (at - pending.offset);  // NOLINT(*-arithmetic)
        if (::pwrite(fd, bytes, length, at) != static_cast<ssize_t>(length)) {
          ::close(fd);
          throw std::runtime_error("PowerLossVfs: pwrite " + path + ": " + std::strerror(errno));
        }
        ++*applied;
      } else {
        ++*dropped;
      }
      at = piece_end;
    }
  }
  ::close(fd);
}

// Overwrites an existing -shm file with random bytes of the same length.
void garble(const std::string& path, std::mt19937* random) {
  // NOLINTNEXTLINE(cppcoreguidelines-pro-type-vararg): open(2) is variadic
  const int fd = ::open(path.c_str(), O_WRONLY | O_CLOEXEC);
  if (fd < 0) return;
  const off_t size = ::lseek(fd, 0, SEEK_END);
  std::string noise(size > 0 ? static_cast<std::size_t>(size) : 0U, '\0');
  for (char& byte : noise) byte = static_cast<char>((*random)() & 0xFFU);
  const bool written =
      noise.empty() || ::pwrite(fd, noise.data(), noise.size(), 0) == static_cast<ssize_t>(size);
  ::close(fd);
  if (!written) throw std::runtime_error("PowerLossVfs: cannot garble " + path);
}

}  // namespace

// ------------------------------------------------------------------------------------------------
// PowerLossVfs
// ------------------------------------------------------------------------------------------------

PowerLossVfs::PowerLossVfs(std::uint32_t tear_seed) : state_(std::make_unique<State>()) {
  if (sqlite3_initialize() != SQLITE_OK) throw std::runtime_error("sqlite3_initialize failed");
  if (sqlite3_vfs_find(kVfsName) != nullptr) {
    throw std::runtime_error("PowerLossVfs: another instance is installed");
  }
  State& state = *state_;
  state.tear_seed = tear_seed;
  state.real_vfs = sqlite3_vfs_find(nullptr);
  if (state.real_vfs == nullptr) throw std::runtime_error("PowerLossVfs: no default VFS");
  sqlite3_vfs& vfs = state.vfs;
  vfs.iVersion = 2;  // no xSetSystemCall family: nothing here needs them
  vfs.szOsFile = static_cast<int>(sizeof(WrappedFile));
  vfs.mxPathname = state.real_vfs->mxPathname;
  vfs.zName = kVfsName;
  vfs.pAppData = &state;
  vfs.xOpen = vfs_open;
  vfs.xDelete = vfs_delete;
  vfs.xAccess = vfs_access;
  vfs.xFullPathname = vfs_full_pathname;
  vfs.xDlOpen = vfs_dl_open;
  vfs.xDlError = vfs_dl_error;
  vfs.xDlSym = vfs_dl_sym;
  vfs.xDlClose = vfs_dl_close;
  vfs.xRandomness = vfs_randomness;
  vfs.xSleep = vfs_sleep;
  vfs.xCurrentTime = vfs_current_time;
  vfs.xGetLastError = vfs_get_last_error;
  vfs.xCurrentTimeInt64 = vfs_current_time_int64;
  if (sqlite3_vfs_register(&vfs, 1) != SQLITE_OK) {
    throw std::runtime_error("PowerLossVfs: sqlite3_vfs_register failed");
  }
}

PowerLossVfs::~PowerLossVfs() {
  sqlite3_vfs_unregister(&state_->vfs);
  sqlite3_vfs_register(state_->real_vfs, 1);
}

void PowerLossVfs::arm(std::uint64_t call_number, PowerCut cut) {
  const std::lock_guard<std::mutex> lock(state_->mutex);
  state_->calls = 0;
  state_->armed_at = call_number;
  state_->cut = cut;
}

void PowerLossVfs::power_off(PowerCut cut) {
  const std::lock_guard<std::mutex> lock(state_->mutex);
  if (state_->dead) return;  // already off: the cut chosen then stands
  state_->cut = cut;
  state_->dead = true;
}

bool PowerLossVfs::powered_off() const { return state_->dead; }

std::uint64_t PowerLossVfs::mutating_calls() const {
  const std::lock_guard<std::mutex> lock(state_->mutex);
  return state_->calls;
}

std::size_t PowerLossVfs::unsynced_operations() const {
  const std::lock_guard<std::mutex> lock(state_->mutex);
  std::size_t count = 0;
  for (const auto& entry : state_->images) count += entry.second->pending.size();
  return count;
}

std::optional<std::size_t> PowerLossVfs::unsynced_operations_of(const std::string& path) const {
  const std::lock_guard<std::mutex> lock(state_->mutex);
  const auto found = state_->images.find(path);
  if (found == state_->images.end()) return std::nullopt;
  return found->second->pending.size();
}

std::size_t PowerLossVfs::open_files() const {
  const std::lock_guard<std::mutex> lock(state_->mutex);
  return state_->open_files;
}

void PowerLossVfs::restart() {
  State& state = *state_;
  const std::lock_guard<std::mutex> lock(state.mutex);
  if (!state.dead) throw std::logic_error("PowerLossVfs::restart: the power is still on");
  if (state.open_files != 0) {
    throw std::logic_error("PowerLossVfs::restart: " + std::to_string(state.open_files) +
                           " files are still open");
  }
  std::mt19937 random(state.tear_seed + 7919U * state.restarts++);
  state.torn_applied = 0;
  state.torn_dropped = 0;
  if (state.cut == PowerCut::kTearUnsynced) {
    for (const auto& entry : state.images) {
      tear_into(entry.first, *entry.second, &random, &state.torn_applied, &state.torn_dropped);
    }
  }
  for (const std::string& shm : state.shm_paths) garble(shm, &random);
  state.images.clear();
  state.shm_paths.clear();
  state.calls = 0;
  state.armed_at = 0;
  state.dead = false;
}

std::size_t PowerLossVfs::torn_pieces_applied() const {
  const std::lock_guard<std::mutex> lock(state_->mutex);
  return state_->torn_applied;
}

std::size_t PowerLossVfs::torn_pieces_dropped() const {
  const std::lock_guard<std::mutex> lock(state_->mutex);
  return state_->torn_dropped;
}

}  // namespace pylon::test
