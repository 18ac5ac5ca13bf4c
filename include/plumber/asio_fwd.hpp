#pragma once
/// Forward declarations of the Asio types that Plumber's public headers only
/// name (a return type, a parameter): an embedder who includes them does not
/// compile Asio's executors and coroutines unless it uses them itself.
#include <boost/asio/detail/config.hpp>

#if defined(BOOST_ASIO_USE_TS_EXECUTOR_AS_DEFAULT)
#include <boost/asio/any_io_executor.hpp>  // a typedef there: it cannot be declared here
#endif

namespace boost::asio {
#if !defined(BOOST_ASIO_USE_TS_EXECUTOR_AS_DEFAULT)
class any_io_executor;
#endif
// Declared without its default executor: <boost/asio/awaitable.hpp> adds it.
template <typename T, typename Executor>
class awaitable;
}  // namespace boost::asio
