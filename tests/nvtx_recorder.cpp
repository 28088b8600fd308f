// An NVTX injection library for tests: logs what the application tells NVTX, one event per line,
// to the file named by KD_NVTX_LOG. Load it with NVTX_INJECTION64_PATH=<this .so>.
//
// Lines (tab-separated):
//   domain   <name>
//   string   <domain> <text>                                  registered string
//   category <domain> <id> <name>
//   push     <domain> <depth> <reg|ascii|none> <message> <category> <payload|->
//   pop      <domain> <depth>
// <domain> is "(global)" for the global domain; depth counts from 1 per thread and domain.
#define NVTX_NO_IMPL
#include <nvtx3/nvToolsExt.h>

#include <cinttypes>
#include <cstdarg>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <mutex>
#include <string>

namespace {

struct DomainRec {
  std::string name;
};
struct StringRec {
  std::string text;
};

std::mutex g_mu;
std::FILE* g_log = nullptr;
thread_local std::map<const void*, int> t_depth;  // per domain

const char* domain_name(nvtxDomainHandle_t d) {
  return d ? reinterpret_cast<const DomainRec*>(d)->name.c_str() : "(global)";
}

void log_line(const char* fmt, ...) __attribute__((format(printf, 1, 2)));
void log_line(const char* fmt, ...) {
  std::lock_guard<std::mutex> lock(g_mu);
  if (!g_log) return;
  va_list ap;
  va_start(ap, fmt);
  std::vfprintf(g_log, fmt, ap);
  va_end(ap);
  std::fflush(g_log);
}

nvtxDomainHandle_t NVTX_API domain_create(const char* name) {
  auto* d = new DomainRec{name ? name : ""};  // lives as long as the process
  log_line("domain\t%s\n", d->name.c_str());
  return reinterpret_cast<nvtxDomainHandle_t>(d);
}

nvtxStringHandle_t NVTX_API register_string(nvtxDomainHandle_t d, const char* s) {
  auto* r = new StringRec{s ? s : ""};
  log_line("string\t%s\t%s\n", domain_name(d), r->text.c_str());
  return reinterpret_cast<nvtxStringHandle_t>(r);
}

void NVTX_API name_category(nvtxDomainHandle_t d, uint32_t id, const char* name) {
  log_line("category\t%s\t%u\t%s\n", domain_name(d), id, name ? name : "");
}

void NVTX_API global_name_category(uint32_t id, const char* name) {
  name_category(nullptr, id, name);
}

int NVTX_API push(nvtxDomainHandle_t d, const nvtxEventAttributes_t* a) {
  const int depth = ++t_depth[d];
  const char* kind = "none";
  std::string msg;
  uint32_t cat = 0;
  std::string payload = "-";
  if (a) {
    cat = a->category;
    if (a->messageType == NVTX_MESSAGE_TYPE_REGISTERED && a->message.registered) {
      kind = "reg";
      msg = reinterpret_cast<const StringRec*>(a->message.registered)->text;
    } else if (a->messageType == NVTX_MESSAGE_TYPE_ASCII && a->message.ascii) {
      kind = "ascii";
      msg = a->message.ascii;
    }
    char buf[64];
    switch (a->payloadType) {
      case NVTX_PAYLOAD_TYPE_INT64:
        std::snprintf(buf, sizeof buf, "%" PRId64, static_cast<int64_t>(a->payload.llValue));
        payload = buf;
        break;
      case NVTX_PAYLOAD_TYPE_UNSIGNED_INT64:
        std::snprintf(buf, sizeof buf, "%" PRIu64, static_cast<uint64_t>(a->payload.ullValue));
        payload = buf;
        break;
      case NVTX_PAYLOAD_TYPE_INT32:
        std::snprintf(buf, sizeof buf, "%d", a->payload.iValue);
        payload = buf;
        break;
      case NVTX_PAYLOAD_TYPE_DOUBLE:
        std::snprintf(buf, sizeof buf, "%g", a->payload.dValue);
        payload = buf;
        break;
      default:
        break;
    }
  }
  log_line("push\t%s\t%d\t%s\t%s\t%u\t%s\n", domain_name(d), depth, kind, msg.c_str(), cat,
           payload.c_str());
  return depth - 1;
}

int NVTX_API pop(nvtxDomainHandle_t d) {
  int& depth = t_depth[d];
  log_line("pop\t%s\t%d\n", domain_name(d), depth);
  if (depth > 0) --depth;
  return depth;
}

int NVTX_API global_push_ex(const nvtxEventAttributes_t* a) {
  return push(nullptr, a);
}
int NVTX_API global_push_a(const char* message) {
  nvtxEventAttributes_t a{};
  a.version = NVTX_VERSION;
  a.size = NVTX_EVENT_ATTRIB_STRUCT_SIZE;
  a.messageType = NVTX_MESSAGE_TYPE_ASCII;
  a.message.ascii = message;
  return push(nullptr, &a);
}
int NVTX_API global_pop() {
  return pop(nullptr);
}

template <typename F>
void install(NvtxFunctionTable table, unsigned size, unsigned id, F fn) {
  if (table && id < size && table[id]) *table[id] = reinterpret_cast<NvtxFunctionPointer>(fn);
}

}  // namespace

extern "C" __attribute__((visibility("default"))) int InitializeInjectionNvtx2(
    NvtxGetExportTableFunc_t get_export_table) {
  const char* path = std::getenv("KD_NVTX_LOG");
  if (!path || !*path) return 0;
  g_log = std::fopen(path, "w");
  if (!g_log) return 0;
  const auto* cb =
      static_cast<const NvtxExportTableCallbacks*>(get_export_table(NVTX_ETID_CALLBACKS));
  if (!cb || !cb->GetModuleFunctionTable) return 0;

  NvtxFunctionTable core = nullptr, core2 = nullptr;
  unsigned core_size = 0, core2_size = 0;
  if (!cb->GetModuleFunctionTable(NVTX_CB_MODULE_CORE, &core, &core_size)) return 0;
  if (!cb->GetModuleFunctionTable(NVTX_CB_MODULE_CORE2, &core2, &core2_size)) return 0;

  install(core, core_size, NVTX_CBID_CORE_RangePushEx, global_push_ex);
  install(core, core_size, NVTX_CBID_CORE_RangePushA, global_push_a);
  install(core, core_size, NVTX_CBID_CORE_RangePop, global_pop);
  install(core, core_size, NVTX_CBID_CORE_NameCategoryA, global_name_category);
  install(core2, core2_size, NVTX_CBID_CORE2_DomainCreateA, domain_create);
  install(core2, core2_size, NVTX_CBID_CORE2_DomainRegisterStringA, register_string);
  install(core2, core2_size, NVTX_CBID_CORE2_DomainNameCategoryA, name_category);
  install(core2, core2_size, NVTX_CBID_CORE2_DomainRangePushEx, push);
  install(core2, core2_size, NVTX_CBID_CORE2_DomainRangePop, pop);
  log_line("init\n");
  return 1;
}
